//! Known-answer test: pins FastCDC's cut points and the chunk ids for a fixed seeded input.
//!
//! Stored data deduplicates only while the same bytes are cut at the same places. If this test
//! fails after a dependency upgrade, the upgrade changed the chunking: do not update the
//! expected values, pin the old behaviour instead (or version the volume's chunker).

use deltadrive::chunking::seeded::seeded_bytes;
use deltadrive::chunking::{ChunkerParams, Manifest, chunk_bytes};

fn lengths(m: &Manifest) -> Vec<u32> {
    m.chunks.iter().map(|c| c.len).collect()
}

#[test]
fn default_params_cut_points_and_ids_are_pinned() {
    let data = seeded_bytes(1 << 20, 0xDE17_A0D5);
    let m = chunk_bytes(ChunkerParams::default(), &data);
    #[rustfmt::skip]
    let expected: [u32; 53] = [
        38712, 31219, 5660, 21775, 10135, 13335, 15429, 10548, 6798, 18902, 4262, 19520, 24078,
        17071, 18742, 22378, 33553, 18657, 18394, 16621, 17915, 17256, 11794, 5166, 12217, 25905,
        23064, 12264, 23030, 21505, 17980, 38111, 17995, 45094, 22861, 32411, 19761, 13098,
        19433, 9376, 14403, 7370, 22512, 60015, 11182, 26669, 25374, 6791, 25089, 15958, 21179,
        20983, 19026,
    ];
    assert_eq!(lengths(&m), expected);
    let ids: Vec<String> = m.chunks.iter().map(|c| c.id.to_hex()).collect();
    assert_eq!(
        ids[0],
        "6026d0f3741190ce75030a43be25d7cad54cef40c80206fc25a71e27ad17138e"
    );
    assert_eq!(
        ids[1],
        "b618add9e6138b60fc26bf65ab6c4afda52f42277e6f40b73023388b4dc5187b"
    );
    assert_eq!(
        ids[2],
        "66d6c69394986b2a99253b6edce16316b8df915febbdb509ac92f402caf66a69"
    );
    assert_eq!(
        ids[52],
        "d34337dd727d8b3a9b8b9372c624594798a54f62d92d364e17a218e869b84967"
    );
    // The manifest id covers every id and length, and the version-1 encoding itself.
    assert_eq!(
        m.id().to_hex(),
        "2741c587351c77afc40decb107c2966619c39b5cf8668a95f20ecbfd4463748b"
    );
}

#[test]
fn small_params_cut_points_are_pinned() {
    // Another average size selects other FastCDC masks: pin those too.
    let data = seeded_bytes(64 * 1024, 0xDE17_A0D5);
    let m = chunk_bytes(ChunkerParams::new(256, 1024, 4096).unwrap(), &data);
    #[rustfmt::skip]
    let expected: [u32; 53] = [
        1059, 314, 1199, 3693, 1778, 1215, 2277, 1910, 1598, 1381, 354, 459, 495, 1490, 3482,
        1956, 1383, 1289, 1518, 1168, 1883, 1112, 1368, 1040, 384, 1037, 678, 266, 926, 326, 289,
        1257, 640, 2041, 1045, 1417, 2331, 602, 1225, 1635, 910, 1096, 618, 1304, 1196, 1048, 900,
        1045, 1758, 1109, 1098, 1619, 315,
    ];
    assert_eq!(lengths(&m), expected);
    assert_eq!(
        m.id().to_hex(),
        "6e4d53f185ecab6d193106732db45fa493720fb24e38db142284083064783273"
    );
}
