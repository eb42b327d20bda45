//! App settings as the API reads them: a new app (`POST /api/v1/apps`), a settings change
//! (`PATCH /api/v1/apps/{name}`, each part checked as the handler does) and a notification target,
//! from arbitrary JSON.
//!
//! Input: the first byte picks the shape; the rest is the JSON body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slipway_proto::api::{AppUpdate, NewApp, NewNotificationTarget};

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 3 {
        0 => {
            if let Ok(new) = serde_json::from_slice::<NewApp>(body) {
                let _ = slipway_scheduler::apps::validate(&new);
            }
        }
        1 => {
            if let Ok(update) = serde_json::from_slice::<AppUpdate>(body) {
                if let Some(limits) = &update.limits {
                    let _ = limits.validate();
                }
                if let Some(edge) = &update.edge {
                    let _ = edge.validate();
                }
                if let Some(previews) = &update.previews {
                    let _ = previews.validate();
                }
                if let Some(status) = &update.commit_status {
                    let _ = slipway_scheduler::status::resolve(status, "https://github.com/acme/shop.git");
                }
            }
        }
        _ => {
            if let Ok(new) = serde_json::from_slice::<NewNotificationTarget>(body) {
                let _ = slipway_scheduler::notify::validate(&new);
            }
        }
    }
});
