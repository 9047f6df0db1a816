//! The git operations of the research loop, through the `git` command.
//!
//! Every commit the harness makes (an experiment's, a worker's merge of a keep) is made by [`IDENTITY`], set here
//! for every git command: it works on a machine where git has no identity configured (a fresh cloud box, a
//! container, a cluster node), and `git log` shows which commits the loop made, whatever the user's own
//! identity is.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The author and committer of the harness's commits: (name, email).
pub const IDENTITY: (&str, &str) = ("autoresearch", "autoresearch@localhost");

pub struct Git {
    pub root: PathBuf,
}

impl Git {
    pub fn new(root: &Path) -> Git {
        Git { root: root.to_path_buf() }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("git");
        let (name, email) = IDENTITY;
        cmd.current_dir(&self.root)
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_AUTHOR_NAME", name)
            .env("GIT_AUTHOR_EMAIL", email)
            .env("GIT_COMMITTER_NAME", name)
            .env("GIT_COMMITTER_EMAIL", email);
        cmd
    }

    /// Runs git; its stdout, or an error with its stderr.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.exec_bytes(args)?).into_owned())
    }

    /// Runs git; its stdout as bytes, or an error with its stderr.
    pub fn exec_bytes(&self, args: &[&str]) -> Result<Vec<u8>> {
        let out = self.command(args).output().context("running git")?;
        if !out.status.success() {
            bail!("git {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(out.stdout)
    }

    pub fn ok(&self, args: &[&str]) -> Result<bool> {
        Ok(self.command(args).output().context("running git")?.status.success())
    }

    pub fn head(&self) -> Result<String> {
        Ok(self.exec(&["rev-parse", "HEAD"])?.trim().to_string())
    }

    pub fn branch(&self) -> Result<String> {
        Ok(self.exec(&["rev-parse", "--abbrev-ref", "HEAD"])?.trim().to_string())
    }

    /// Tracked files whose content differs from `commit` (working tree against it), and untracked files
    /// that are not ignored.
    pub fn changed_files(&self, commit: &str) -> Result<Vec<String>> {
        let mut files: Vec<String> =
            self.exec(&["diff", "--name-only", commit, "--"])?.lines().map(str::to_string).collect();
        files.extend(self.exec(&["ls-files", "--others", "--exclude-standard"])?.lines().map(str::to_string));
        files.sort();
        files.dedup();
        Ok(files)
    }

    /// The diff from `from` to `to` (a commit, or None for the working tree).
    pub fn diff(&self, from: &str, to: Option<&str>) -> Result<String> {
        match to {
            Some(to) => self.exec(&["diff", from, to]),
            None => self.exec(&["diff", from, "--"]),
        }
    }

    /// Commits `path` with `message`; returns the new commit.
    pub fn commit_file(&self, path: &str, message: &str) -> Result<String> {
        self.commit_files(&[path.to_string()], message)
    }

    /// Commits the changes to `paths` (changed, new or removed files) with `message`; returns the new commit.
    pub fn commit_files(&self, paths: &[String], message: &str) -> Result<String> {
        let mut add = vec!["add", "--all", "--"];
        add.extend(paths.iter().map(String::as_str));
        self.exec(&add)?;
        let mut commit = vec!["commit", "--quiet", "--no-verify", "-m", message, "--"];
        commit.extend(paths.iter().map(String::as_str));
        self.exec(&commit)?;
        self.head()
    }

    /// A merge commit of `head` and `commit` whose tree is `commit`'s exactly; returns it (no branch moves).
    pub fn merge_taking(&self, head: &str, commit: &str, message: &str) -> Result<String> {
        let tree = format!("{commit}^{{tree}}");
        Ok(self.exec(&["commit-tree", &tree, "-p", head, "-p", commit, "-m", message])?.trim().to_string())
    }

    /// A commit of `tree` on `parent` with `message`, authored and committed at `date` where given (else now);
    /// returns it (no branch moves).
    pub fn commit_tree(&self, tree: &str, parent: &str, message: &str, date: Option<&str>) -> Result<String> {
        let mut cmd = self.command(&["commit-tree", tree, "-p", parent, "-m", message]);
        if let Some(date) = date {
            cmd.env("GIT_AUTHOR_DATE", date).env("GIT_COMMITTER_DATE", date);
        }
        let out = cmd.output().context("running git")?;
        if !out.status.success() {
            bail!("git commit-tree {tree} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Moves the branch and the working tree to `commit`, dropping every change to tracked files.
    pub fn reset_hard(&self, commit: &str) -> Result<()> {
        self.exec(&["reset", "--quiet", "--hard", commit]).map(drop)
    }

    /// Untracked files that are not ignored.
    pub fn untracked(&self) -> Result<Vec<String>> {
        Ok(self.exec(&["ls-files", "--others", "--exclude-standard"])?.lines().map(str::to_string).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository whose own configuration gives git no identity and forbids guessing one, whatever the
    /// machine's global configuration says: what a new user's machine is.
    fn repo_without_identity() -> (tempfile::TempDir, Git) {
        let dir = tempfile::tempdir().unwrap();
        let git = Git::new(dir.path());
        git.exec(&["init", "--quiet"]).unwrap();
        for (key, value) in [("user.name", ""), ("user.email", ""), ("user.useConfigOnly", "true")] {
            git.exec(&["config", key, value]).unwrap();
        }
        (dir, git)
    }

    #[test]
    fn commits_and_merges_need_no_configured_identity_and_say_who_made_them() {
        let (dir, git) = repo_without_identity();
        let plain = Command::new("git").current_dir(dir.path()).args(["commit", "--allow-empty", "-m", "x"]).output();
        assert!(!plain.unwrap().status.success(), "a plain commit has no identity here");

        std::fs::write(dir.path().join("train.rs"), "base").unwrap();
        let base = git.commit_file("train.rs", "baseline").unwrap();
        std::fs::write(dir.path().join("train.rs"), "a").unwrap();
        let a = git.commit_file("train.rs", "experiment a").unwrap();
        git.reset_hard(&base).unwrap();
        std::fs::write(dir.path().join("train.rs"), "b").unwrap();
        let b = git.commit_file("train.rs", "experiment b").unwrap();
        let merge = git.merge_taking(&a, &b, "keep b").unwrap();

        assert_eq!(git.exec(&["show", &format!("{merge}:train.rs")]).unwrap(), "b");
        assert_eq!(git.exec(&["rev-list", "--parents", "-n1", &merge]).unwrap().trim(), format!("{merge} {a} {b}"));
        let (name, email) = IDENTITY;
        for commit in [&base, &a, &b, &merge] {
            let who = git.exec(&["log", "-1", "--format=%an <%ae> %cn <%ce>", commit]).unwrap();
            assert_eq!(who.trim(), format!("{name} <{email}> {name} <{email}>"));
        }
    }
}
