//! TTY processes: runc makes the terminal in the container (its slave is in
//! the container's own /dev/pts) and hands the master to the agent over a
//! console socket; input, output and resizing go through that master.
mod common;

use std::{path::Path, time::Duration};

use common::*;
use heteropod_dpu_proxy::{
    client::{CreateContainerRequest, ExecRequest, Stream},
    AgentClient, DpuAgent,
};
use serde_json::json;

/// Adds a host binary (and its libraries) to the harness's shared rootfs.
fn add_binary(h: &Harness, bin: &str) {
    let rootfs = h.dir.path().join("rootfs");
    let host = ["/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("host has no {bin}"));
    let ldd = std::process::Command::new("ldd")
        .arg(&host)
        .output()
        .unwrap();
    let libs = String::from_utf8_lossy(&ldd.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(std::path::PathBuf::from)
        .collect::<Vec<_>>();
    for from in libs.iter().chain(std::iter::once(&host)) {
        let to = if from == &host {
            rootfs.join("bin").join(bin)
        } else {
            rootfs.join(from.strip_prefix("/").unwrap())
        };
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(std::fs::canonicalize(from).unwrap(), to).unwrap();
    }
}

/// Reads a process's terminal output as it comes, so a test can act after
/// the process has reached a point.
struct Screen<'a> {
    agent: &'a AgentClient,
    id: &'a str,
    exec_id: &'a str,
    offset: u64,
    text: String,
    eof: bool,
}

impl<'a> Screen<'a> {
    fn new(agent: &'a AgentClient, id: &'a str, exec_id: &'a str) -> Self {
        Screen {
            agent,
            id,
            exec_id,
            offset: 0,
            text: String::new(),
            eof: false,
        }
    }

    async fn more(&mut self) {
        let r = self
            .agent
            .read_output(self.id, self.exec_id, Stream::STDOUT, self.offset, 4096)
            .await
            .unwrap();
        self.offset = r.offset + r.data.len() as u64;
        self.text.push_str(&String::from_utf8_lossy(&r.data));
        self.eof = r.eof;
    }

    /// Everything so far once `marker` has appeared (a hang guard, not a
    /// timing assertion).
    async fn until(&mut self, marker: &str) -> String {
        let wait = async {
            while !self.text.contains(marker) && !self.eof {
                self.more().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("no {marker:?} in {:?}", self.text));
        assert!(
            self.text.contains(marker),
            "no {marker:?} in {:?}",
            self.text
        );
        self.text.clone()
    }

    async fn until_end(&mut self) -> String {
        let wait = async {
            while !self.eof {
                self.more().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .expect("output did not end");
        self.text.clone()
    }
}

/// What every terminal process here runs: names its terminal, proves stdin
/// and stdout are it, reads a line, and shows its size before and after a
/// resize (`stty size` prints "rows cols").
const SCRIPT: &str = "tty; [ -t 0 ] && [ -t 1 ] && echo tty-yes; stty size; \
    echo ready; read line; echo got-$line; stty size; echo to-stderr >&2; echo done";

/// Drives SCRIPT: the size set before start is seen (`first_size`), input
/// reaches `read`, a resize while running is seen, stderr is merged into
/// the terminal.
async fn drive(agent: &AgentClient, id: &str, exec_id: &str, first_size: Option<&str>) {
    let mut screen = Screen::new(agent, id, exec_id);
    let first = screen.until("ready").await;
    let tty = first.lines().next().unwrap_or_default().trim();
    assert!(
        tty.starts_with("/dev/pts/"),
        "tty printed {tty:?}: {first:?}"
    );
    assert!(!first.contains("not a tty"), "{first:?}");
    assert!(first.contains("tty-yes"), "{first:?}");
    if let Some(size) = first_size {
        assert!(first.contains(size), "{first:?}");
    }
    agent.resize_pty(id, exec_id, 120, 40).await.unwrap();
    agent
        .write_input(id, exec_id, b"hello\n".to_vec())
        .await
        .unwrap();
    let all = screen.until_end().await;
    let after = &all[all.find("got-hello").expect(&all)..];
    assert!(after.contains("40 120"), "{all:?}");
    assert!(after.contains("to-stderr"), "{all:?}");
    assert!(after.contains("done"), "{all:?}");
    let stderr = output(agent, id, exec_id, Stream::STDERR).await;
    assert_eq!(stderr, "");
    assert_eq!(wait_exit(agent, id, exec_id).await, 0);
}

#[tokio::test]
async fn terminal_container_has_its_own_pty_input_and_size() {
    if !can_run() {
        return;
    }
    let mut h = Harness::new("tty");
    add_binary(&h, "tty");
    let agent = h.start_agent().await;
    let bundle = h.bundle_with("t", &["sh", "-c", SCRIPT], json!({}), true);
    let req = CreateContainerRequest {
        id: "t".into(),
        bundle: bundle.display().to_string(),
        stdin: true,
        terminal: true,
        ..Default::default()
    };
    agent.create_container(req).await.unwrap();
    // Sized while created, before the program runs.
    agent.resize_pty("t", "", 100, 30).await.unwrap();
    agent.start("t", "").await.unwrap();
    drive(&agent, "t", "", Some("30 100")).await;
    assert_no_console_sockets(&h);
    // Exited: nothing left to resize.
    let e = agent.resize_pty("t", "", 80, 24).await.unwrap_err();
    assert!(
        matches!(e, heteropod_dpu_proxy::Error::FailedPrecondition(_)),
        "{e}"
    );
    agent.delete("t", "").await.unwrap();
}

#[tokio::test]
async fn terminal_exec_has_its_own_pty_input_and_size() {
    if !can_run() {
        return;
    }
    let mut h = Harness::new("ttyexec");
    add_binary(&h, "tty");
    let agent = h.start_agent().await;
    h.create(&agent, "p", &["sleep", "1000"]).await;
    agent.start("p", "").await.unwrap();
    let process = json!({"args": ["sh", "-c", SCRIPT], "cwd": "/", "terminal": true,
        "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}});
    let req = ExecRequest {
        container_id: "p".into(),
        exec_id: "e".into(),
        process_json: process.to_string().into_bytes(),
        stdin: true,
        terminal: true,
        ..Default::default()
    };
    agent.exec(req).await.unwrap();
    agent.start("p", "e").await.unwrap();
    // An exec runs at once: its first size may be set after it is printed.
    agent.resize_pty("p", "e", 100, 30).await.unwrap();
    drive(&agent, "p", "e", None).await;
    assert_no_console_sockets(&h);
    // A process without a terminal cannot be resized.
    let e = agent.resize_pty("p", "", 80, 24).await.unwrap_err();
    assert!(
        matches!(e, heteropod_dpu_proxy::Error::FailedPrecondition(_)),
        "{e}"
    );
    agent.kill("p", "", 9, false).await.unwrap();
    wait_exit(&agent, "p", "").await;
    agent.delete("p", "").await.unwrap();
}

/// Console sockets are removed once runc has sent the terminal.
fn assert_no_console_sockets(h: &Harness) {
    let containers = h.state_dir().join("containers");
    for dir in std::fs::read_dir(&containers)
        .into_iter()
        .flatten()
        .flatten()
    {
        for f in std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = f.file_name().to_string_lossy().into_owned();
            assert!(!name.ends_with(".sock"), "left behind: {name}");
        }
    }
}

#[tokio::test]
async fn terminal_create_that_runc_refuses_fails_cleanly() {
    if !can_run() {
        return;
    }
    let mut h = Harness::new("ttyfail");
    let agent = h.start_agent().await;
    // runc fails after it has sent the terminal (no such program), and
    // before it connects at all (a config it rejects).
    let cases = [
        (
            "late",
            h.bundle_with("late", &["/bin/nonexistent"], json!({}), true),
        ),
        ("early", {
            let b = h.bundle_with("early", &["sh"], json!({}), true);
            let path = b.join("config.json");
            let mut spec: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            spec["linux"]["sysctl"] = json!({"not.a.sysctl": "1"});
            std::fs::write(&path, spec.to_string()).unwrap();
            b
        }),
    ];
    for (id, bundle) in cases {
        let req = CreateContainerRequest {
            id: id.into(),
            bundle: bundle.display().to_string(),
            terminal: true,
            ..Default::default()
        };
        let e = agent.create_container(req).await.unwrap_err();
        assert!(e.to_string().contains("runc create failed"), "{id}: {e}");
        assert_no_console_sockets(&h);
    }
    // The agent still makes terminals afterwards.
    add_binary(&h, "tty");
    let bundle = h.bundle_with("ok", &["tty"], json!({}), true);
    let req = CreateContainerRequest {
        id: "ok".into(),
        bundle: bundle.display().to_string(),
        terminal: true,
        ..Default::default()
    };
    agent.create_container(req).await.unwrap();
    agent.start("ok", "").await.unwrap();
    let out = Screen::new(&agent, "ok", "").until_end().await;
    assert!(out.starts_with("/dev/pts/"), "{out:?}");
    assert_eq!(wait_exit(&agent, "ok", "").await, 0);
    agent.delete("ok", "").await.unwrap();
}
