//! A real Network UPS Tools server for tests: Debian's `upsd` with the
//! `dummy-ups` driver, whose UPS status is whatever the test writes into its
//! definition file (the driver reads the file again when its time stamp
//! changes). Both run in the foreground from a temporary directory and are
//! killed on drop.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// Where Debian's nut-server package puts the daemon and the drivers.
const NUT_LIB: &str = "/lib/nut";
/// The UPS's name on the server.
pub const UPS_NAME: &str = "test";

pub struct Ups {
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    changes: u64,
    driver: Child,
    upsd: Child,
}

impl Ups {
    /// Starts upsd on `ip` (a free port) with the UPS online, and waits until
    /// it answers with the driver's data.
    pub fn start(ip: Ipv4Addr) -> Ups {
        assert!(
            std::path::Path::new(NUT_LIB).join("dummy-ups").exists(),
            "Debian's nut-server is not installed (`make deps` installs it)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddr::from((ip, port));
        let d = dir.path();
        let file = |name: &str, text: String| {
            std::fs::write(d.join(name), text).unwrap();
        };
        file(
            "ups.conf",
            format!(
                "[{UPS_NAME}]\ndriver = dummy-ups\nport = {}\ndesc = \"quince test UPS\"\n",
                d.join("ups.dev").display()
            ),
        );
        file("upsd.conf", format!("LISTEN {ip} {port}\n"));
        file("upsd.users", String::new());
        file("nut.conf", "MODE=standalone\n".into());
        std::fs::create_dir(d.join("state")).unwrap();
        let mut ups = Ups {
            addr,
            changes: 0,
            driver: spawn(&dir, "dummy-ups", &["-a", UPS_NAME, "-i", "1"]),
            upsd: spawn(&dir, "upsd", &[]),
            dir,
        };
        ups.set("OL");
        let deadline = Instant::now() + Duration::from_secs(20);
        while ups.status().as_deref() != Some("OL") {
            assert!(Instant::now() < deadline, "upsd did not come up");
            std::thread::sleep(Duration::from_millis(200));
        }
        ups
    }

    /// Sets `ups.status` (e.g. `OL`, `OB`, `OB LB`). The driver notices
    /// within its 1 s poll; [`Ups::wait_for`] waits until upsd says so.
    pub fn set(&mut self, status: &str) {
        let path = self.dir.path().join("ups.dev");
        let mut f = std::fs::File::create(&path).unwrap();
        writeln!(
            f,
            "ups.status: {status}\nbattery.charge: 80\nups.mfr: quince"
        )
        .unwrap();
        // A new time stamp for every change, even two within one second.
        self.changes += 1;
        f.set_modified(SystemTime::now() + Duration::from_secs(self.changes))
            .unwrap();
    }

    /// Sets the status and waits until upsd reports it.
    pub fn switch(&mut self, status: &str) {
        self.set(status);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.status().as_deref() != Some(status) {
            assert!(Instant::now() < deadline, "upsd never reported {status}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ups.status` as upsd answers it now, or None if it cannot say.
    pub fn status(&self) -> Option<String> {
        let stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        (&stream)
            .write_all(format!("GET VAR {UPS_NAME} ups.status\n").as_bytes())
            .ok()?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).ok()?;
        line.trim_end()
            .strip_prefix(&format!("VAR {UPS_NAME} ups.status "))
            .map(|v| v.trim_matches('"').to_string())
    }
}

fn spawn(dir: &tempfile::TempDir, program: &str, args: &[&str]) -> Child {
    let d = dir.path();
    Command::new(PathBuf::from(NUT_LIB).join(program))
        .args(args)
        // Foreground; as root, stay root (the temporary directory is ours).
        .args(["-F", "-u", "root"])
        .env("NUT_CONFPATH", d)
        .env("NUT_STATEPATH", d.join("state"))
        .env("NUT_ALTPIDPATH", d.join("state"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {program}: {e}"))
}

impl Drop for Ups {
    fn drop(&mut self) {
        for child in [&mut self.upsd, &mut self.driver] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
