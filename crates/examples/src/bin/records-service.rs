//! The example records service: each app's records, in memory, keyed by the
//! `x-portcullis-app-id` header the gateway adds. An app reads only its own
//! records. `POST /records/v1/notes` stores the body as one record;
//! `GET /records/v1/notes` lists them.
//!
//! Usage: `records-service --listen IP:PORT --cert F --key F --ca-bundle F`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Records kept per app; the oldest is dropped beyond this, so memory stays
/// bounded whatever an app sends.
const MAX_RECORDS_PER_APP: usize = 1000;

fn main() -> std::process::ExitCode {
    let records: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
    portcullis_examples::server::main_with("records-service", move |request| {
        let records = Arc::clone(&records);
        async move {
            // Requests that did not come through the gateway carry no app id.
            let Some(app_id) = request.app_id else {
                return (400, serde_json::json!({"error": "missing_app_id"}));
            };
            let mut records = records.lock().expect("records lock");
            let own = records.entry(app_id.clone()).or_default();
            match request.method {
                hyper::Method::POST => {
                    let Ok(text) = String::from_utf8(request.body.to_vec()) else {
                        return (400, serde_json::json!({"error": "body_not_utf8"}));
                    };
                    if own.len() >= MAX_RECORDS_PER_APP {
                        own.remove(0);
                    }
                    own.push(text);
                    (201, serde_json::json!({"app_id": app_id, "stored": own.len()}))
                }
                hyper::Method::GET | hyper::Method::HEAD => {
                    (200, serde_json::json!({"app_id": app_id, "records": own}))
                }
                _ => (405, serde_json::json!({"error": "method_not_allowed"})),
            }
        }
    })
}
