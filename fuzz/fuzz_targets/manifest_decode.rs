//! Manifest and manifest-edit decoders on arbitrary bytes: no panic, and anything accepted is
//! canonical (re-encodes to the same bytes).
#![no_main]

use deltadrive::chunking::{Manifest, ManifestEdit};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data) {
        assert_eq!(m.encode(), data);
    }
    if let Ok(e) = ManifestEdit::decode(data) {
        assert_eq!(e.encode(), data);
    }
});
