//! What crosses the broker: a runner's job messages and reports, and application log chunks, as
//! the scheduler decodes them; jobs and control messages as a runner decodes them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slipway_proto::message::{AppLogChunk, RunnerReport};
use slipway_proto::{Body, Control, Envelope, Job};

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = serde_json::from_slice::<Envelope>(data) {
        if let Body::Logs { lines } = &envelope.body {
            for line in lines {
                let _ = slipway_proto::text::escape_str(&line.line);
            }
        }
        let _ = serde_json::to_vec(&envelope).expect("a decoded message encodes again");
    }
    let _ = serde_json::from_slice::<RunnerReport>(data);
    let _ = serde_json::from_slice::<AppLogChunk>(data);
    let _ = serde_json::from_slice::<Job>(data);
    let _ = serde_json::from_slice::<Control>(data);
});
