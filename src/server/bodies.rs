//! Request bodies, bounded: a length announced over the endpoint's limit is refused before a
//! byte is read (so no `100 Continue` goes out), a body that falls behind a minimum pace is cut
//! off, and the bodies held at once share a memory budget.
//!
//! Two layers: [`watch_wire`] wraps every request (outside decompression, which hides the
//! announced length and would pace decompressed bytes), [`bound`] wraps each route that takes
//! a body and reads it whole, once, into exactly one buffer.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::{Body, BodyDataStream, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::header::CONTENT_ENCODING;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::error::ApiError;
use crate::protocol::ErrorCode;

/// Time a body gets before it must keep pace: a client may pause briefly (compressing, a
/// congested link) without losing its request.
pub const BODY_GRACE: Duration = Duration::from_secs(10);
/// Slowest average pace a body may keep after [`BODY_GRACE`], in bytes per second: half the
/// slowest link the client allows time for (128 KiB/s), so an honest client times out first,
/// while holding a connection costs a trickler real bandwidth.
pub const BODY_MIN_RATE: u64 = 64 << 10;
/// Default memory for request bodies being received or handled at once: eight full chunk
/// batches (one client's upload pipeline) twice over.
pub const DEFAULT_BODY_MEMORY: usize = 512 << 20;
/// First buffer of a body whose decoded size is not known: grown by doubling up to the limit.
const FIRST_BUFFER: usize = 64 << 10;

/// What the wire said about a request's body, noted before decompression.
#[derive(Clone)]
struct Wire {
    /// The length from `Content-Length` (0 when there is no body), `None` when chunked.
    announced: Option<u64>,
    /// True when a `Content-Encoding` makes the decoded size unknown.
    encoded: bool,
    /// Why the body was refused, if it was: answered in place of the handler's answer.
    fault: Arc<OnceLock<Fault>>,
}

/// Why a body was refused here rather than by the handler.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// It fell behind the minimum pace.
    TooSlow { received: u64 },
    /// It passed the endpoint's limit (decoded).
    TooLarge { limit: usize },
}

impl Fault {
    fn answer(self) -> Response {
        match self {
            Fault::TooSlow { received } => ApiError::new(
                ErrorCode::Timeout,
                format!(
                    "the request body stopped arriving in time ({received} bytes came): after \
                     the first {} s a body must keep {} KiB/s on average",
                    BODY_GRACE.as_secs(),
                    BODY_MIN_RATE >> 10
                ),
            ),
            Fault::TooLarge { limit } => ApiError::new(
                ErrorCode::TooLarge,
                format!("request body is over this endpoint's limit of {limit} bytes"),
            ),
        }
        .into_response()
    }
}

/// A refusal's error as the handler sees it (it answers with the [`Fault`] instead).
#[derive(Debug, thiserror::Error)]
enum BodyError {
    /// See [`Fault::TooSlow`].
    #[error("request body too slow")]
    TooSlow,
    /// See [`Fault::TooLarge`].
    #[error("request body over the limit of {0} bytes")]
    TooLarge(usize),
    /// The memory budget is closed (never while the server runs).
    #[error("request body memory budget closed")]
    BudgetClosed,
    /// Reading or decoding the body failed.
    #[error(transparent)]
    Read(#[from] axum::Error),
}

/// The answer for a request whose body was refused here, else the handler's.
fn answer(fault: &OnceLock<Fault>, resp: Response) -> Response {
    match fault.get() {
        Some(f) => f.answer(),
        None => resp,
    }
}

/// Outermost layer: notes the announced length and encoding, paces the wire body, and answers
/// for a body refused further in.
pub(super) async fn watch_wire(mut req: Request, next: Next) -> Response {
    let announced = req.body().size_hint().exact();
    let encoded = req
        .headers()
        .get(CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let fault = Arc::new(OnceLock::new());
    req.extensions_mut().insert(Wire {
        announced,
        encoded,
        fault: fault.clone(),
    });
    if announced != Some(0) {
        let (parts, body) = req.into_parts();
        let body = Body::from_stream(paced(body.into_data_stream(), fault.clone()));
        req = Request::from_parts(parts, body);
    }
    answer(&fault, next.run(req).await)
}

/// How long after its first poll a body may take to deliver `received` bytes and the next.
fn allowance(received: u64) -> Duration {
    BODY_GRACE + Duration::from_secs_f64(received as f64 / BODY_MIN_RATE as f64)
}

/// The body's frames, failing once the next one is later than [`allowance`] allows.
fn paced(
    data: BodyDataStream,
    fault: Arc<OnceLock<Fault>>,
) -> impl Stream<Item = Result<Bytes, BodyError>> + Send {
    struct Pace {
        data: BodyDataStream,
        /// When the body was first asked for: the handler decides when (after authorizing).
        started: Option<Instant>,
        received: u64,
    }
    let start = Pace {
        data,
        started: None,
        received: 0,
    };
    // Fused: a decoder above may ask again after the end.
    futures_util::stream::unfold(Some(start), move |pace| {
        let fault = fault.clone();
        async move {
            let mut pace = pace?;
            let started = *pace.started.get_or_insert_with(Instant::now);
            let deadline = started + allowance(pace.received);
            match tokio::time::timeout_at(deadline, pace.data.next()).await {
                Ok(Some(Ok(data))) => {
                    pace.received += data.len() as u64;
                    Some((Ok(data), Some(pace)))
                }
                Ok(Some(Err(e))) => Some((Err(BodyError::Read(e)), None)),
                Ok(None) => None,
                Err(_) => {
                    let received = pace.received;
                    tracing::debug!(received, "request body fell behind its pace");
                    // A first refusal stands; this one is the same.
                    let _ = fault.set(Fault::TooSlow { received });
                    Some((Err(BodyError::TooSlow), None))
                }
            }
        }
    })
    .fuse()
}

/// Memory for request bodies, shared by all of them, counted in KiB.
#[derive(Clone, Debug)]
pub struct BodyBudget {
    kib: Arc<Semaphore>,
    total_kib: usize,
}

impl BodyBudget {
    /// A budget of `bytes` (at least 1 KiB).
    pub fn new(bytes: usize) -> BodyBudget {
        let total_kib = kib(bytes).clamp(1, Semaphore::MAX_PERMITS);
        BodyBudget {
            kib: Arc::new(Semaphore::new(total_kib)),
            total_kib,
        }
    }

    /// Waits until `bytes` are free, and holds them. More than the whole budget takes it all.
    async fn reserve(&self, bytes: usize) -> Result<OwnedSemaphorePermit, BodyError> {
        let want = u32::try_from(kib(bytes).min(self.total_kib)).unwrap_or(u32::MAX);
        self.kib
            .clone()
            .acquire_many_owned(want)
            .await
            .map_err(|_| BodyError::BudgetClosed)
    }
}

/// `bytes` in KiB, rounded up.
fn kib(bytes: usize) -> usize {
    bytes.div_ceil(1024)
}

/// A body's bytes with their share of the budget: released when the last `Bytes` goes.
struct Held {
    buf: Vec<u8>,
    _share: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

/// The limit and budget of one route's bodies.
#[derive(Clone, Debug)]
pub(super) struct Bounds {
    limit: usize,
    budget: BodyBudget,
}

impl Bounds {
    /// Bodies of at most `limit` bytes (decoded), sharing `budget`.
    pub(super) fn new(limit: usize, budget: &BodyBudget) -> Bounds {
        Bounds {
            limit,
            budget: budget.clone(),
        }
    }
}

/// Per-route layer: refuses an announced length over the limit at once, else hands the
/// handler a body read whole into one buffer when it first asks (after authorizing), within
/// the limit and the budget.
pub(super) async fn bound(State(b): State<Bounds>, req: Request, next: Next) -> Response {
    let (announced, encoded, fault) = match req.extensions().get::<Wire>() {
        Some(w) => (w.announced, w.encoded, w.fault.clone()),
        // Without watch_wire nothing is known about the wire: assume the worst.
        None => (None, true, Arc::new(OnceLock::new())),
    };
    if let Some(n) = announced
        && n > b.limit as u64
    {
        tracing::debug!(
            announced = n,
            limit = b.limit,
            "request body refused unread"
        );
        return ApiError::new(
            ErrorCode::TooLarge,
            format!(
                "request body of {n} bytes is over this endpoint's limit of {} bytes",
                b.limit
            ),
        )
        .into_response();
    }
    if announced == Some(0) {
        return next.run(req).await;
    }
    // A plain body's size is known; a compressed or chunked one may decode to the limit.
    let exact = match announced {
        Some(n) if !encoded => usize::try_from(n).ok(),
        _ => None,
    };
    let (parts, body) = req.into_parts();
    let whole = read_whole(body.into_data_stream(), b, exact, fault.clone());
    let req = Request::from_parts(parts, Body::from_stream(futures_util::stream::once(whole)));
    answer(&fault, next.run(req).await)
}

/// Reads a body into one buffer of `exact` bytes, or grown by doubling up to the limit, with
/// that much of the budget held while reading; afterwards the share shrinks to the buffer.
async fn read_whole(
    mut data: BodyDataStream,
    b: Bounds,
    exact: Option<usize>,
    fault: Arc<OnceLock<Fault>>,
) -> Result<Bytes, BodyError> {
    let mut share = b.budget.reserve(exact.unwrap_or(b.limit)).await?;
    let mut buf = Vec::with_capacity(exact.unwrap_or(FIRST_BUFFER.min(b.limit)));
    while let Some(frame) = data.next().await {
        let frame = frame?;
        if frame.len() > b.limit - buf.len() {
            let _ = fault.set(Fault::TooLarge { limit: b.limit });
            return Err(BodyError::TooLarge(b.limit));
        }
        if frame.len() > buf.capacity() - buf.len() {
            let want = (buf.capacity() * 2)
                .max(buf.len() + frame.len())
                .min(b.limit);
            buf.reserve_exact(want - buf.len());
        }
        buf.extend_from_slice(&frame);
    }
    let keep = kib(buf.capacity()).min(share.num_permits());
    drop(share.split(share.num_permits() - keep));
    Ok(Bytes::from_owner(Held { buf, _share: share }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowance_grows_with_what_came() {
        assert_eq!(allowance(0), BODY_GRACE);
        assert_eq!(
            allowance(BODY_MIN_RATE * 3),
            BODY_GRACE + Duration::from_secs(3)
        );
    }

    #[tokio::test]
    async fn a_body_is_read_into_one_buffer_within_its_share_of_the_budget() {
        let budget = BodyBudget::new(100 << 10);
        let bounds = Bounds::new(64 << 10, &budget);
        let frames: Vec<Result<Bytes, std::io::Error>> = (0..10)
            .map(|i| Ok(Bytes::from(vec![i as u8; 3000])))
            .collect();
        let data = Body::from_stream(futures_util::stream::iter(frames)).into_data_stream();
        let fault = Arc::new(OnceLock::new());
        let whole = read_whole(data, bounds.clone(), None, fault.clone())
            .await
            .unwrap();
        assert_eq!(whole.len(), 30_000);
        assert_eq!(whole[29_999], 9);
        // Grown by doubling from 64 KiB capped at the limit: the share is the buffer's.
        assert_eq!(budget.kib.available_permits(), 100 - 64);
        drop(whole);
        assert_eq!(budget.kib.available_permits(), 100);
        // One byte over the limit is refused and noted.
        let over = Body::from(vec![0u8; (64 << 10) + 1]).into_data_stream();
        assert!(matches!(
            read_whole(over, bounds, None, fault.clone()).await,
            Err(BodyError::TooLarge(_))
        ));
        assert!(matches!(fault.get(), Some(Fault::TooLarge { .. })));
        assert_eq!(budget.kib.available_permits(), 100);
    }

    #[tokio::test]
    async fn a_second_body_waits_for_the_budget() {
        let budget = BodyBudget::new(10 << 10);
        let bounds = Bounds::new(10 << 10, &budget);
        let fault = Arc::new(OnceLock::new());
        let first = Body::from(vec![1u8; 8 << 10]).into_data_stream();
        let held = read_whole(first, bounds.clone(), Some(8 << 10), fault.clone())
            .await
            .unwrap();
        let second = Body::from(vec![2u8; 4 << 10]).into_data_stream();
        let waiting = tokio::spawn(read_whole(second, bounds, Some(4 << 10), fault));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "4 KiB more than the 2 KiB left");
        drop(held);
        assert_eq!(waiting.await.unwrap().unwrap().len(), 4 << 10);
    }
}
