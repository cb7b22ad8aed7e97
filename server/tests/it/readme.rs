//! The README's API tour, executed exactly as written (with the server's address substituted):
//! every `sh` block runs through `sh -c`, and the documented answer that follows it must be a
//! subset of the real one (server-clock fields aside).

use crate::support::TestServer;
use serde_json::Value;

/// Fields whose values depend on the clock of the run.
const CLOCK_FIELDS: [&str; 2] = ["server_timestamp", "created"];

fn subset(doc: &Value, real: &Value, at: &str) -> Result<(), String> {
    match (doc, real) {
        (Value::Object(d), Value::Object(r)) => {
            for (k, dv) in d {
                if CLOCK_FIELDS.contains(&k.as_str()) {
                    continue;
                }
                let rv = r.get(k).ok_or_else(|| format!("{at}.{k} is missing"))?;
                subset(dv, rv, &format!("{at}.{k}"))?;
            }
            Ok(())
        }
        (Value::Array(d), Value::Array(r)) => {
            if d.len() != r.len() {
                return Err(format!(
                    "{at}: {} items documented, {} answered",
                    d.len(),
                    r.len()
                ));
            }
            for (i, (dv, rv)) in d.iter().zip(r).enumerate() {
                subset(dv, rv, &format!("{at}[{i}]"))?;
            }
            Ok(())
        }
        _ if doc == real => Ok(()),
        _ => Err(format!("{at}: documented {doc}, answered {real}")),
    }
}

#[test]
fn the_api_tour_works_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let tour = readme
        .split("## API tour")
        .nth(1)
        .unwrap()
        .split("### MessagePack")
        .next()
        .unwrap();
    // (command, expected kind, expected text) in order.
    let mut steps = Vec::new();
    let mut blocks = tour.split("```").skip(1).step_by(2);
    while let Some(block) = blocks.next() {
        let Some(cmd) = block.strip_prefix("sh\n") else {
            continue;
        };
        let out = blocks
            .next()
            .expect("a documented answer follows each command");
        let (kind, text) = out.split_once('\n').unwrap();
        steps.push((
            cmd.trim().to_string(),
            kind.to_string(),
            text.trim().to_string(),
        ));
    }
    assert!(steps.len() >= 12, "only {} steps found", steps.len());
    let s = TestServer::start();
    for (cmd, kind, want) in steps {
        assert!(cmd.contains("http://127.0.0.1:8080"), "{cmd}");
        let run = cmd.replace("http://127.0.0.1:8080", &s.url);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&run)
            .env("METERSTREAM_KEY", crate::support::ADMIN_KEY)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = String::from_utf8(out.stdout).unwrap();
        match kind.as_str() {
            "json" => {
                let doc: Value = serde_json::from_str(&want)
                    .unwrap_or_else(|e| panic!("README answer of {cmd} is not JSON: {e}"));
                let real: Value = serde_json::from_str(&got)
                    .unwrap_or_else(|e| panic!("{cmd} answered non-JSON {got:?}: {e}"));
                if let Err(e) = subset(&doc, &real, "answer") {
                    panic!("{cmd}\n{e}\nreal answer: {real}");
                }
            }
            "text" => assert_eq!(got.trim(), want, "{cmd}"),
            k => panic!("unknown answer block {k}"),
        }
    }
}
