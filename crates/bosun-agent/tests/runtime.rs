//! The process runtime and pod network against real processes and namespaces.

mod common;

use common::{is_root, shim_exe, unique, unique_cidr};

use std::time::Duration;

use bosun_agent::network::{BridgeNetwork, PodNetwork};
use bosun_agent::runtime::{ContainerKey, ContainerLaunch, ProcessRuntime, Runtime, RuntimeState};
use bosun_agent::shim_spec::BindMount;

fn key(uid: &str, name: &str, attempt: u32) -> ContainerKey {
    ContainerKey {
        pod_uid: uid.into(),
        container: name.into(),
        attempt,
    }
}

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

async fn wait_exited(rt: &dyn Runtime, k: &ContainerKey) -> RuntimeState {
    for _ in 0..200 {
        let st = rt.status(k).await.unwrap();
        if matches!(st, RuntimeState::Exited { .. }) {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("container {k:?} did not exit");
}

#[tokio::test]
async fn runs_command_logs_and_records_exit() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(dir.path().join("pods"), shim_exe());
    let k = key("u1", "main", 0);
    let launch = ContainerLaunch {
        argv: sh("echo out-$GREETING; echo err-line >&2; printf tail; exit 3"),
        env: vec![("GREETING".into(), "hi".into())],
        working_dir: Some(dir.path().to_owned()),
        ..Default::default()
    };
    rt.create(&k, &launch).await.unwrap();
    assert_eq!(rt.status(&k).await.unwrap(), RuntimeState::Created);
    rt.start(&k).await.unwrap();
    match wait_exited(&rt, &k).await {
        RuntimeState::Exited {
            exit_code, reason, ..
        } => {
            assert_eq!(exit_code, 3);
            assert_eq!(reason, "Error");
        }
        other => panic!("{other:?}"),
    }
    let log = std::fs::read_to_string(rt.log_path(&k)).unwrap();
    let recs: Vec<_> = log
        .lines()
        .map(|l| bosun_agent::cri_log::parse_record(l).unwrap())
        .collect();
    assert!(
        recs.iter()
            .any(|r| r.stream == "stdout" && r.content == "out-hi" && !r.partial)
    );
    assert!(
        recs.iter()
            .any(|r| r.stream == "stderr" && r.content == "err-line")
    );
    assert!(recs.iter().any(|r| r.content == "tail" && r.partial));
    rt.remove_pod("u1").await.unwrap();
    assert!(!dir.path().join("pods/u1").exists());
}

#[tokio::test]
async fn missing_executable_is_a_start_error() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(dir.path().join("pods"), shim_exe());
    let k = key("u2", "main", 0);
    let launch = ContainerLaunch {
        argv: vec!["/nonexistent/bosun-test-binary".into()],
        ..Default::default()
    };
    rt.create(&k, &launch).await.unwrap();
    match rt.start(&k).await.unwrap() {
        RuntimeState::Exited {
            reason, message, ..
        } => {
            assert_eq!(reason, "StartError");
            assert!(message.unwrap().contains("No such file"));
        }
        other => panic!("{other:?}"),
    }
    let k2 = key("u2", "nowd", 0);
    let launch = ContainerLaunch {
        argv: sh("true"),
        working_dir: Some("/nonexistent/bosun-wd".into()),
        ..Default::default()
    };
    rt.create(&k2, &launch).await.unwrap();
    match rt.start(&k2).await.unwrap() {
        RuntimeState::Exited {
            reason, message, ..
        } => {
            assert_eq!(reason, "StartError");
            assert!(
                message
                    .unwrap()
                    .contains("workingDir /nonexistent/bosun-wd")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        rt.create(&key("u2", "empty", 0), &ContainerLaunch::default())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn containers_survive_runtime_restart_and_stop_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let pods = dir.path().join("pods");
    let k = key("u3", "loop", 0);
    {
        let rt = ProcessRuntime::new(pods.clone(), shim_exe());
        let launch = ContainerLaunch {
            argv: sh("trap 'echo got-term; exit 0' TERM; while true; do sleep 0.1; done"),
            ..Default::default()
        };
        rt.create(&k, &launch).await.unwrap();
        assert!(matches!(
            rt.start(&k).await.unwrap(),
            RuntimeState::Running { .. }
        ));
    } // the runtime (the "agent") goes away; the shim and container keep running
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rt = ProcessRuntime::new(pods.clone(), shim_exe());
    assert_eq!(rt.adopt().await.unwrap(), vec![k.clone()]);
    let pid = match rt.status(&k).await.unwrap() {
        RuntimeState::Running { pid, .. } => pid.unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    match rt.stop(&k, Duration::from_secs(10)).await.unwrap() {
        RuntimeState::Exited { exit_code, .. } => assert_eq!(exit_code, 0, "trap ran"),
        other => panic!("{other:?}"),
    }
    let log = std::fs::read_to_string(rt.log_path(&k)).unwrap();
    assert!(log.contains("got-term"));
    rt.remove_pod("u3").await.unwrap();
}

#[tokio::test]
async fn sigterm_ignored_means_sigkill_after_grace() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(dir.path().join("pods"), shim_exe());
    let k = key("u4", "stubborn", 0);
    let launch = ContainerLaunch {
        argv: sh("trap '' TERM; (sleep 60) & while true; do sleep 0.1; done"),
        ..Default::default()
    };
    rt.create(&k, &launch).await.unwrap();
    rt.start(&k).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    match rt.stop(&k, Duration::from_millis(500)).await.unwrap() {
        RuntimeState::Exited {
            exit_code, signal, ..
        } => {
            assert_eq!(signal, Some(9));
            assert_eq!(exit_code, 137);
        }
        other => panic!("{other:?}"),
    }
    rt.remove_pod("u4").await.unwrap();
}

#[tokio::test]
async fn killed_shim_is_reported_and_its_container_killed() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(dir.path().join("pods"), shim_exe());
    let k = key("u5", "orphan", 0);
    rt.create(
        &k,
        &ContainerLaunch {
            argv: sh("while true; do sleep 0.1; done"),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    rt.start(&k).await.unwrap();
    let state: bosun_agent::shim_spec::ShimState = serde_json::from_slice(
        &std::fs::read(dir.path().join("pods/u5/containers/orphan/0/state.json")).unwrap(),
    )
    .unwrap();
    let pid = state.pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(state.shim_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    match rt.status(&k).await.unwrap() {
        RuntimeState::Exited {
            reason, message, ..
        } => {
            assert_eq!(reason, "ContainerStatusUnknown");
            assert!(message.unwrap().contains("supervisor"));
        }
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        bosun_agent::osutil::proc_start_ticks(pid).is_none(),
        "orphaned container process was killed"
    );
    rt.remove_pod("u5").await.unwrap();
}

#[tokio::test]
async fn pods_get_own_network_namespaces_and_volumes() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bridge = unique("bt");
    let net = BridgeNetwork::new(&bridge, unique_cidr(), dir.path()).unwrap();
    let _guard = common::Cleanup {
        pods_dir: dir.path().join("pods"),
        bridge: Some(bridge.clone()),
    };
    let result = async {
        net.init().await?;
        let rt = ProcessRuntime::new(dir.path().join("pods"), shim_exe());
        let vol = dir.path().join("vol");
        std::fs::create_dir_all(&vol)?;
        std::fs::write(vol.join("greeting"), "hello from volume")?;
        let mount_target = dir.path().join("not-on-host").join("config");
        let mut ips = Vec::new();
        for uid in ["aaaaaaaa-1111", "bbbbbbbb-2222"] {
            let pn = net.setup(uid).await?;
            assert_eq!(net.setup(uid).await?, pn, "setup is idempotent");
            let k = key(uid, "web", 0);
            let launch = ContainerLaunch {
                argv: vec![
                    "python3".into(),
                    "-m".into(),
                    "http.server".into(),
                    "8080".into(),
                    "--bind".into(),
                    "0.0.0.0".into(),
                ],
                env: vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())],
                working_dir: Some(mount_target.clone()),
                netns: pn.netns.clone(),
                mounts: vec![BindMount {
                    source: vol.clone(),
                    target: mount_target.clone(),
                    read_only: true,
                }],
                ..Default::default()
            };
            rt.create(&k, &launch).await?;
            let st = rt.start(&k).await?;
            assert!(matches!(st, RuntimeState::Running { .. }), "{st:?}");
            ips.push(pn.ip);
        }
        assert_ne!(ips[0], ips[1]);
        // The volume is visible only inside the containers' mount namespaces.
        assert!(!mount_target.join("greeting").exists());
        for ip in &ips {
            let mut body = String::new();
            for _ in 0..100 {
                let out = tokio::process::Command::new("curl")
                    .args(["-s", "-m", "2", &format!("http://{ip}:8080/greeting")])
                    .output()
                    .await?;
                body = String::from_utf8_lossy(&out.stdout).into_owned();
                if out.status.success() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(body, "hello from volume", "served by the pod at {ip}");
        }
        // exec runs in the pod's namespaces: it sees eth0 with the pod IP and the volume.
        let k = key("aaaaaaaa-1111", "web", 0);
        let out = rt
            .exec(
                &k,
                &sh("cat greeting; cat /proc/net/fib_trie"),
                Duration::from_secs(5),
            )
            .await?;
        assert_eq!(out.exit_code, 0, "{}", out.output);
        assert!(out.output.starts_with("hello from volume"));
        assert!(out.output.contains(&ips[0].to_string()), "{}", out.output);
        let denied = rt
            .exec(&k, &sh("echo x > greeting"), Duration::from_secs(5))
            .await?;
        assert_ne!(denied.exit_code, 0, "volume is read-only");
        for uid in ["aaaaaaaa-1111", "bbbbbbbb-2222"] {
            rt.remove_pod(uid).await?;
            net.teardown(uid).await?;
            assert!(net.get(uid).await?.is_none());
        }
        assert!(net.list().await?.is_empty());
        anyhow::Ok(())
    }
    .await;
    net.cleanup().await.unwrap();
    assert!(
        !std::path::Path::new(&format!("/sys/class/net/{bridge}")).exists(),
        "bridge removed"
    );
    let _ = std::fs::remove_dir(dir.path().join("not-on-host/config"));
    result.unwrap();
}

#[tokio::test]
async fn shim_rotates_logs_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut rt = ProcessRuntime::new(dir.path().join("pods"), shim_exe());
    rt.log_max_bytes = 4096;
    rt.log_max_files = 3;
    let k = key("u6", "chatty", 0);
    rt.create(
        &k,
        &ContainerLaunch {
            argv: sh("i=0; while [ $i -lt 1000 ]; do echo \"line $i\"; i=$((i+1)); done"),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    rt.start(&k).await.unwrap();
    wait_exited(&rt, &k).await;
    let files = bosun_agent::cri_log::log_files(&rt.log_path(&k));
    assert_eq!(files.len(), 3, "{files:?}");
    for f in &files {
        assert!(std::fs::metadata(f).unwrap().len() <= 4096);
    }
    let (out, _) = bosun_agent::cri_log::read_log(&rt.log_path(&k), &Default::default()).unwrap();
    let out = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(*lines.last().unwrap(), "line 999");
    assert!(lines.len() < 1000, "oldest lines rotated out");
    let first: u32 = lines[0].strip_prefix("line ").unwrap().parse().unwrap();
    assert_eq!(
        first as usize + lines.len(),
        1000,
        "what is kept is contiguous"
    );
    rt.remove_pod("u6").await.unwrap();
}

/// `SigBlk:`/`SigIgn:` of a process, as the kernel reports them.
fn signal_masks(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        let v = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} missing in {status}"));
        u64::from_str_radix(v.trim(), 16).unwrap()
    };
    (field("SigBlk:"), field("SigIgn:"))
}

/// Creates and starts `/bin/sleep 300` (a program that installs no signal handler); its pid.
async fn start_sleeper(rt: &ProcessRuntime, k: &ContainerKey) -> u32 {
    rt.create(
        k,
        &ContainerLaunch {
            argv: vec!["/bin/sleep".into(), "300".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    match rt.start(k).await.unwrap() {
        RuntimeState::Running { pid, .. } => pid.unwrap(),
        other => panic!("{other:?}"),
    }
}

/// The `/proc/self/status` line starting with `field` of a command run in the container
/// (as exec probes and preStop hooks are).
async fn status_line_in_container(rt: &ProcessRuntime, k: &ContainerKey, field: &str) -> String {
    let argv = ["/bin/grep".into(), field.into(), "/proc/self/status".into()];
    let out = rt.exec(k, &argv, Duration::from_secs(10)).await.unwrap();
    out.output.trim().to_string()
}

#[tokio::test]
async fn workload_starts_with_no_blocked_or_ignored_signals() {
    // The agent's own signal state must not leak into containers: block SIGHUP in this
    // thread, which spawns the shims (spawning passes the mask on).
    let hup = nix::sys::signal::SigSet::from(nix::sys::signal::Signal::SIGHUP);
    hup.thread_block().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(dir.path().join("pods"), shim_exe());
    let k = key("u7", "sleeper", 0);
    // A program that installs no handler: it must die of SIGTERM's default action.
    let pid = start_sleeper(&rt, &k).await;
    let (blocked, ignored) = signal_masks(pid);
    // Signals 32 and 33 belong to the C library (thread cancellation, setxid), which leaves
    // them ignored in what posix_spawn starts; no program can use them.
    let ignored = ignored & !(0b11 << 31);
    assert_eq!(blocked, 0, "blocked signals of the workload: {blocked:#x}");
    assert_eq!(ignored, 0, "ignored signals of the workload: {ignored:#x}");
    // Commands run in the container (exec probes, preStop hooks) start clean too.
    let out = status_line_in_container(&rt, &k, "SigBlk").await;
    assert_eq!(out, "SigBlk:\t0000000000000000");
    hup.thread_unblock().unwrap();
    match rt.stop(&k, Duration::from_secs(60)).await.unwrap() {
        RuntimeState::Exited {
            signal, exit_code, ..
        } => {
            assert_eq!(
                signal,
                Some(15),
                "ended by SIGTERM, not the SIGKILL after grace"
            );
            assert_eq!(exit_code, 143);
        }
        other => panic!("{other:?}"),
    }
    rt.remove_pod("u7").await.unwrap();
}

/// The `THP_enabled:` line of a process's status: 0 when `PR_SET_THP_DISABLE` is set.
fn thp_enabled(status: &str) -> Option<&str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(str::trim)
}

#[tokio::test]
async fn workload_gets_transparent_huge_pages_back() {
    // bosun switches them off for itself (mimalloc's arenas), and the flag is inherited by
    // the shims it spawns: the programs they start must get the system's setting back.
    nix::sys::prctl::set_thp_disable(true).unwrap();
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    assert_eq!(thp_enabled(&own), Some("0"), "{own}");
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(dir.path().join("pods"), shim_exe());
    let k = key("u7b", "sleeper", 0);
    let pid = start_sleeper(&rt, &k).await;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert_eq!(thp_enabled(&status), Some("1"), "{status}");
    let out = status_line_in_container(&rt, &k, "THP_enabled").await;
    assert_eq!(thp_enabled(&out), Some("1"), "{out}");
    rt.stop(&k, Duration::from_secs(10)).await.unwrap();
    rt.remove_pod("u7b").await.unwrap();
}

#[tokio::test]
async fn stdout_and_stderr_are_logged_in_the_order_written() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(dir.path().join("pods"), shim_exe());
    let k = key("u8", "both", 0);
    // Each round: a burst of numbered lines on stdout (one write), then one on stderr.
    let script = r#"
import sys, time
n = 0
for _ in range(30):
    for stream in (sys.stdout, sys.stderr):
        stream.write("".join(f"{n + i}\n" for i in range(20)))
        stream.flush()
        n += 20
    time.sleep(0.05)
"#;
    rt.create(
        &k,
        &ContainerLaunch {
            argv: vec!["python3".into(), "-c".into(), script.into()],
            env: vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    rt.start(&k).await.unwrap();
    match wait_exited(&rt, &k).await {
        RuntimeState::Exited { exit_code, .. } => assert_eq!(exit_code, 0),
        other => panic!("{other:?}"),
    }
    let log = std::fs::read_to_string(rt.log_path(&k)).unwrap();
    let recs: Vec<_> = log
        .lines()
        .map(|l| bosun_agent::cri_log::parse_record(l).unwrap())
        .collect();
    let nums: Vec<u32> = recs.iter().map(|r| r.content.parse().unwrap()).collect();
    assert_eq!(nums, (0..1200).collect::<Vec<_>>(), "log:\n{log}");
    assert!(recs.iter().any(|r| r.stream == "stderr"));
    let stamps: Vec<jiff::Timestamp> = recs.iter().map(|r| r.timestamp.parse().unwrap()).collect();
    assert!(
        stamps.windows(2).all(|w| w[0] < w[1]),
        "timestamps increase with the order of the records"
    );
    rt.remove_pod("u8").await.unwrap();
}

#[tokio::test]
async fn reused_pod_address_drops_the_stale_neighbour_entry() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bridge = unique("bt");
    let net = BridgeNetwork::new(&bridge, unique_cidr(), dir.path()).unwrap();
    let _guard = common::Cleanup {
        pods_dir: dir.path().join("pods"),
        bridge: Some(bridge.clone()),
    };
    let ip_cmd = |args: Vec<String>| {
        let out = std::process::Command::new("ip")
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let result = async {
        net.init().await?;
        // Another pod keeps the bridge up (its first port coming up would flush the table).
        net.setup("eeeeeeee-5555").await?;
        let first = net.setup("cccccccc-3333").await?;
        let addr = first.ip.to_string();
        // The node knew the first pod's MAC (as after any traffic to it).
        ip_cmd(
            [
                "neigh",
                "replace",
                &addr,
                "lladdr",
                "02:00:00:00:00:01",
                "dev",
                &bridge,
            ]
            .map(String::from)
            .to_vec(),
        );
        net.teardown("cccccccc-3333").await?;
        let second = net.setup("dddddddd-4444").await?;
        assert_eq!(second.ip, first.ip, "the address is reused");
        let neigh = ip_cmd(
            ["neigh", "show", &addr, "dev", &bridge]
                .map(String::from)
                .to_vec(),
        );
        assert!(
            !neigh.contains("02:00:00:00:00:01"),
            "the stopped pod's MAC is forgotten: {neigh}"
        );
        net.teardown("dddddddd-4444").await?;
        net.teardown("eeeeeeee-5555").await?;
        anyhow::Ok(())
    }
    .await;
    net.cleanup().await.unwrap();
    result.unwrap();
}

#[tokio::test]
async fn isolated_container_has_own_pid_namespace_user_and_view() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("pods").join("secret-of-another-pod");
    std::fs::create_dir_all(secret.parent().unwrap()).unwrap();
    std::fs::write(&secret, "x").unwrap();
    let rt = ProcessRuntime::new(dir.path().join("pods"), shim_exe());
    let k = key("iso", "main", 0);
    let sec = bosun_agent::security::Security {
        run_as_user: Some(65534),
        run_as_group: Some(65534),
        supplemental_groups: vec![4242],
        ..Default::default()
    };
    let launch = ContainerLaunch {
        argv: sh(&format!(
            "grep -E '^(Uid|Gid|Groups|CapEff|NoNewPrivs):' /proc/self/status; echo pid=$$; \
             echo procs=$(ls /proc | grep -c '^[0-9]'); echo host=$(hostname); \
             cat {} 2>/dev/null && echo secret-readable; touch /usr/x 2>/dev/null && echo host-writable; \
             exec sleep 60",
            secret.display()
        )),
        isolation: Some(bosun_agent::security::Isolation::for_process(
            &sec,
            "iso-pod".into(),
        )),
        ..Default::default()
    };
    rt.create(&k, &launch).await.unwrap();
    rt.start(&k).await.unwrap();
    let mut log = String::new();
    for _ in 0..100 {
        log = std::fs::read_to_string(rt.log_path(&k)).unwrap_or_default();
        if log.contains("host=") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let has = |s: &str| log.lines().any(|l| l.contains(s));
    assert!(has("Uid:\t65534\t65534\t65534\t65534"), "{log}");
    assert!(has("Gid:\t65534\t65534\t65534\t65534"), "{log}");
    assert!(has("Groups:\t4242"), "{log}");
    assert!(has("CapEff:\t0000000000000000"), "{log}");
    assert!(has("NoNewPrivs:\t1"), "{log}");
    // The shell is the child of the pod's init (PID 1): pid 2, and few processes.
    assert!(has("pid=2"), "{log}");
    assert!(has("host=iso-pod"), "{log}");
    let procs: usize = log
        .lines()
        .find_map(|l| l.split("procs=").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    // init, the shell, and the pipeline counting them; the host has hundreds.
    assert!(procs <= 6, "{log}");
    assert!(!has("secret-readable"), "{log}");
    assert!(!has("host-writable"), "{log}");
    // Exec (probes, hooks) runs in the same namespaces, as the same user.
    let out = rt
        .exec(
            &k,
            &[
                "/bin/sh".into(),
                "-c".into(),
                "id -u; hostname; echo $$".into(),
            ],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0, "{}", out.output);
    let lines: Vec<&str> = out.output.lines().collect();
    assert_eq!(lines[..2], ["65534", "iso-pod"], "{}", out.output);
    assert!(lines[2].parse::<u32>().unwrap() < 100, "{}", out.output);
    // SIGTERM reaches `sleep`, which has no handler, through the init.
    match rt.stop(&k, Duration::from_secs(30)).await.unwrap() {
        RuntimeState::Exited { exit_code, .. } => assert_eq!(exit_code, 143),
        other => panic!("{other:?}"),
    }
    rt.remove_pod("iso").await.unwrap();
}
