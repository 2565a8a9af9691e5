//! The example weather service: answers every GET with today's forecast as
//! JSON. With `--plain` it is also the outbound test host
//! `feed.weather.test` that apps reach through the egress proxy.
//!
//! Usage: `weather-service --listen IP:PORT (--cert F --key F --ca-bundle F | --plain)`

fn main() -> std::process::ExitCode {
    portcullis_examples::server::main_with("weather-service", |request| async move {
        if request.method != hyper::Method::GET && request.method != hyper::Method::HEAD {
            return (405, serde_json::json!({"error": "method_not_allowed"}));
        }
        (
            200,
            serde_json::json!({
                "city": "Lisbon",
                "forecast": "sunny",
                "temperature_c": 21,
                "path": request.path,
                "caller": request.app_id,
            }),
        )
    })
}
