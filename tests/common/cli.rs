//! The `quince` command line as a user runs it: one profile directory per
//! user, the password in `QUINCE_PASSWORD`, a server the test started.

use std::process::{Command, Output};

use super::TestServer;

/// A user with a profile of their own, driving the real `quince` binary.
pub struct CliUser {
    pub home: tempfile::TempDir,
    pub name: String,
}

impl CliUser {
    pub fn new(name: &str) -> CliUser {
        CliUser {
            home: tempfile::tempdir().expect("profile directory"),
            name: name.to_string(),
        }
    }

    /// Runs `quince ARGS` as this user.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_quince"))
            .args(args)
            .env("QUINCE_HOME", self.home.path())
            .env("QUINCE_PASSWORD", super::password(&self.name))
            .output()
            .unwrap_or_else(|e| panic!("quince {args:?}: {e}"))
    }

    /// Runs `quince ARGS`, which must succeed, and returns its standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "quince {args:?} as {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `quince ARGS`, which must fail, and returns its standard error.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "quince {args:?} as {} should have failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Registers this user on `server` with `invite`.
    pub fn register(&self, server: &TestServer, invite: &str) {
        self.ok(&[
            "register",
            "--server",
            &server.addr.to_string(),
            "--invite",
            invite,
            "--fingerprint",
            &server.fingerprint,
            &self.name,
        ]);
    }
}
