//! The git operations of the research loop, through the `git` command.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

pub struct Git {
    root: PathBuf,
}

impl Git {
    pub fn new(root: &Path) -> Git {
        Git { root: root.to_path_buf() }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("git");
        cmd.current_dir(&self.root).args(args).env("GIT_TERMINAL_PROMPT", "0");
        cmd
    }

    /// Runs git; its stdout, or an error with its stderr.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = self.command(args).output().context("running git")?;
        if !out.status.success() {
            bail!("git {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn ok(&self, args: &[&str]) -> Result<bool> {
        Ok(self.command(args).output().context("running git")?.status.success())
    }

    pub fn head(&self) -> Result<String> {
        Ok(self.run(&["rev-parse", "HEAD"])?.trim().to_string())
    }

    pub fn branch(&self) -> Result<String> {
        Ok(self.run(&["rev-parse", "--abbrev-ref", "HEAD"])?.trim().to_string())
    }

    /// Tracked files whose content differs from `commit` (working tree against it), and untracked files
    /// that are not ignored.
    pub fn changed_files(&self, commit: &str) -> Result<Vec<String>> {
        let mut files: Vec<String> =
            self.run(&["diff", "--name-only", commit, "--"])?.lines().map(str::to_string).collect();
        files.extend(self.run(&["ls-files", "--others", "--exclude-standard"])?.lines().map(str::to_string));
        files.sort();
        files.dedup();
        Ok(files)
    }

    /// The diff from `from` to `to` (a commit, or None for the working tree).
    pub fn diff(&self, from: &str, to: Option<&str>) -> Result<String> {
        match to {
            Some(to) => self.run(&["diff", from, to]),
            None => self.run(&["diff", from, "--"]),
        }
    }

    /// Commits `path` with `message`; returns the new commit.
    pub fn commit_file(&self, path: &str, message: &str) -> Result<String> {
        self.run(&["add", "--", path])?;
        self.run(&[
            "-c",
            "user.name=autoresearch",
            "-c",
            "user.email=autoresearch@localhost",
            "commit",
            "--quiet",
            "--no-verify",
            "-m",
            message,
            "--",
            path,
        ])?;
        self.head()
    }

    /// Moves the branch and the working tree to `commit`, dropping every change to tracked files.
    pub fn reset_hard(&self, commit: &str) -> Result<()> {
        self.run(&["reset", "--quiet", "--hard", commit]).map(drop)
    }

    /// Untracked files that are not ignored.
    pub fn untracked(&self) -> Result<Vec<String>> {
        Ok(self.run(&["ls-files", "--others", "--exclude-standard"])?.lines().map(str::to_string).collect())
    }
}
