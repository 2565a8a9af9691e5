//! `portcullis ca` end to end: init, issue, list, revoke, on a temporary
//! data directory.

mod common;

use common::*;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_writes_private_files_and_refuses_overwrite() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path();

    let first = portcullis(data, &["ca", "init", "--trust-domain", "weather.example"]);
    assert!(first.status.success(), "{}", text(&first));
    assert_eq!(mode(&data.join("ca")), 0o700);
    assert_eq!(mode(&data.join("ca/root-key.pem")), 0o600);
    assert_eq!(mode(&data.join("ca/intermediate-key.pem")), 0o600);

    let again = portcullis(data, &["ca", "init", "--trust-domain", "weather.example"]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    let message = text(&again);
    assert!(message.contains(&data.join("ca").display().to_string()), "{message}");
    assert!(message.contains("--force"), "{message}");

    let forced = portcullis(data, &["ca", "init", "--trust-domain", "weather.example", "--force"]);
    assert!(forced.status.success(), "{}", text(&forced));

    let missing = portcullis(temp.path().join("other").as_path(), &["ca", "init"]);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(text(&missing).contains("--trust-domain"), "{}", text(&missing));
}

#[test]
fn issue_list_revoke_round_trip() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path();
    assert!(portcullis(data, &["ca", "init", "--trust-domain", "weather.example"]).status.success());

    let register = portcullis(data, &["app", "register", "--id", "forecast", "--name", "Forecast", "--owner", "acme"]);
    assert!(register.status.success(), "{}", text(&register));

    // Issuing works with the root key offline.
    std::fs::rename(data.join("ca/root-key.pem"), temp.path().join("root-key.offline")).unwrap();

    let out = data.join("forecast");
    let issued = portcullis(data, &["ca", "issue", "--app", "forecast", "--out", out.to_str().unwrap()]);
    assert!(issued.status.success(), "{}", text(&issued));
    assert_eq!(mode(&out.join("key.pem")), 0o600);
    let chain = std::fs::read_to_string(out.join("cert.pem")).unwrap();
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
    assert_eq!(
        std::fs::read_to_string(out.join("ca-bundle.pem")).unwrap(),
        std::fs::read_to_string(data.join("ca/root.pem")).unwrap()
    );

    // openssl reads the SPIFFE id, DNS SAN, key type and lifetime.
    let gateway = data.join("gateway");
    let args =
        ["ca", "issue", "--platform", "gateway", "--dns", "gateway.weather.example", "--dns", "127.0.0.1", "--out"];
    let issued = portcullis(data, &[&args[..], &[gateway.to_str().unwrap()]].concat());
    assert!(issued.status.success(), "{}", text(&issued));
    let shown = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(gateway.join("cert.pem"))
        .output()
        .unwrap();
    let x509_text = text(&shown);
    assert!(x509_text.contains("URI:spiffe://weather.example/platform/gateway"), "{x509_text}");
    assert!(x509_text.contains("DNS:gateway.weather.example"), "{x509_text}");
    assert!(x509_text.contains("IP Address:127.0.0.1"), "{x509_text}");
    assert!(x509_text.contains("ecdsa-with-SHA256"), "{x509_text}");
    assert!(x509_text.contains("prime256v1"), "{x509_text}");

    let service = data.join("weather");
    let issued = portcullis(
        data,
        &["ca", "issue", "--service", "weather", "--lifetime", "2h", "--out", service.to_str().unwrap()],
    );
    assert!(issued.status.success(), "{}", text(&issued));

    let listed = portcullis(data, &["ca", "list", "--format", "json"]);
    assert!(listed.status.success(), "{}", text(&listed));
    let json: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(json["kind"], "certificate_list");
    let certificates = json["certificates"].as_array().unwrap();
    assert_eq!(certificates.len(), 3);
    let find = |identity: &str| certificates.iter().find(|c| c["identity"] == identity).unwrap().clone();
    let app = find("spiffe://weather.example/app/forecast");
    let platform = find("spiffe://weather.example/platform/gateway");
    let weather = find("spiffe://weather.example/service/weather");
    assert_eq!(app["status"], "valid");
    let life = |c: &serde_json::Value| c["not_after"].as_i64().unwrap() - c["not_before"].as_i64().unwrap();
    assert_eq!(life(&app), 24 * 3600 * 1000);
    assert_eq!(life(&platform), 3600 * 1000);
    assert_eq!(life(&weather), 2 * 3600 * 1000);
    assert_eq!(app["spki_sha256"].as_str().unwrap().len(), 44, "base64 of 32 bytes");

    let serial = app["serial"].as_str().unwrap().to_owned();
    let revoked = portcullis(data, &["ca", "revoke", &serial, "--reason", "key compromise"]);
    assert!(revoked.status.success(), "{}", text(&revoked));
    let again = portcullis(data, &["ca", "revoke", &serial]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    let unknown = portcullis(data, &["ca", "revoke", "abcdef"]);
    assert_eq!(unknown.status.code(), Some(1), "{}", text(&unknown));
    assert!(text(&unknown).contains("no certificate with serial abcdef"), "{}", text(&unknown));

    let filtered = portcullis(data, &["ca", "list", "--app", "forecast", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&filtered.stdout).unwrap();
    let only = json["certificates"].as_array().unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["status"], "revoked");
    assert_eq!(only[0]["revocation_reason"], "key compromise");

    let by_subject = portcullis(data, &["ca", "revoke", "--service", "weather", "--reason", "retired"]);
    assert!(by_subject.status.success(), "{}", text(&by_subject));
    assert!(text(&by_subject).contains("revoked 1 certificates of service weather"), "{}", text(&by_subject));

    let table = portcullis(data, &["ca", "list"]);
    let table = text(&table);
    assert!(table.contains("SERIAL"), "{table}");
    assert!(table.contains("STATUS"), "{table}");
    assert_eq!(table.matches("revoked").count(), 2, "{table}");
    assert_eq!(table.matches("valid").count(), 1, "{table}");
}

#[test]
fn issue_rejects_bad_input() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path();
    let out = data.join("out");
    let out = out.to_str().unwrap();

    let no_ca = portcullis(data, &["ca", "issue", "--app", "forecast", "--out", out]);
    assert_eq!(no_ca.status.code(), Some(2), "{}", text(&no_ca));
    assert!(text(&no_ca).contains("portcullis ca init"), "{}", text(&no_ca));

    assert!(portcullis(data, &["ca", "init", "--trust-domain", "weather.example"]).status.success());
    assert!(portcullis(data, &["app", "register", "--id", "a", "--name", "A", "--owner", "acme"]).status.success());
    for (args, expected) in [
        (vec!["--app", "unregistered"], "app \"unregistered\" is not registered"),
        (vec!["--app", "Bad_Id"], "invalid app id"),
        (vec!["--app", "a", "--dns", "bad name"], "invalid DNS name"),
        (vec!["--app", "a", "--lifetime", "500days"], "invalid certificate lifetime"),
    ] {
        let output = portcullis(data, &[&["ca", "issue", "--out", out][..], &args[..]].concat());
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", text(&output));
        assert!(text(&output).contains(expected), "{args:?}: {}", text(&output));
    }
    let both = portcullis(data, &["ca", "issue", "--app", "a", "--service", "b", "--out", out]);
    assert_eq!(both.status.code(), Some(2), "{}", text(&both));
    let neither = portcullis(data, &["ca", "issue", "--out", out]);
    assert_eq!(neither.status.code(), Some(2), "{}", text(&neither));
    assert!(text(&neither).contains("--app ID, --service NAME or --platform COMPONENT"), "{}", text(&neither));
}
