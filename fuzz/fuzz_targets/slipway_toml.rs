//! `slipway.toml`, as the runner reads it from a repository it clones.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(err) = slipway_detect::SlipwayToml::parse(text) {
        // The error names a line and column of the text.
        let _ = err.to_string();
    }
});
