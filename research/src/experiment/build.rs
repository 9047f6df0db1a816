//! The build step: the training binary, compiled from the worker's tree (a worktree's file in the repository's
//! tree, one worker at a time), or a project's setup command in the worker's own tree; the process journaled
//! while it runs.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::files::SETUP_LOG;
use crate::process::Role;
use crate::project::Commands;
use crate::project_training::run_setup;
use crate::trainer::{Built, Trainer};
use crate::worker::say_as;
use crate::{file_hash, Worker, TRAINING_FILE};

/// Builds the training binary, the build process recorded in the journal while it runs. A worker in a
/// worktree has its file built in the repository's tree, one worker at a time, into its own binary; its wait
/// for the tree counts as [`Built::waited`].
pub fn build(worker: &mut Worker, trainer: &Trainer) -> Result<Built> {
    let session = worker.session.clone();
    if let Some(commands) = &session.project.commands {
        return Ok(Built { output: setup(worker, trainer, commands)?, waited: Duration::ZERO });
    }
    let mut recorded = None;
    let number = worker.number;
    let mut build = |worker: &mut Worker| {
        trainer.build(
            &mut |cmd| {
                let (child, r) = worker.spawn(cmd, Role::Build)?;
                recorded = Some(r);
                Ok(child)
            },
            &mut |line| say_as(number, line),
        )
    };
    let result = if worker.in_repository_tree() {
        build(worker)
    } else {
        let file =
            std::fs::read(worker.root.join(TRAINING_FILE)).with_context(|| format!("reading {TRAINING_FILE}"))?;
        let binary = trainer.installed.as_ref().context("a worker in a worktree has a binary of its own")?;
        // The worker's binary says what it was built from: the experiment's build after the loop's check of
        // the same file is then no second compilation (the repository's tree held another file meanwhile).
        let source = binary.with_extension("source");
        let hash = file_hash(&file);
        let built = std::fs::read_to_string(&source).ok().filter(|_| binary.exists());
        match built.as_deref().and_then(|b| b.strip_prefix(&format!("{hash}\n"))) {
            Some(output) => Ok(Built { output: Ok(output.to_string()), waited: Duration::ZERO }),
            None => {
                let _ = std::fs::remove_file(&source);
                let session = worker.session.clone();
                let asked = Instant::now();
                let result = session.build_in_tree(&file, || {
                    let tree_waited = asked.elapsed();
                    build(worker).map(|built| Built { waited: built.waited + tree_waited, ..built })
                });
                if let Ok(Built { output: Ok(output), .. }) = &result {
                    autoresearch_harness::fsutil::write_atomic(&source, format!("{hash}\n{output}").as_bytes())?;
                }
                result
            }
        }
    };
    if let Some(r) = recorded {
        worker.forget(&r)?;
    }
    result
}

/// A project's setup, in the worker's own tree, journaled while it runs; a project without one has nothing to
/// build.
fn setup(worker: &mut Worker, trainer: &Trainer, commands: &Commands) -> Result<std::result::Result<String, String>> {
    let Some(step) = &commands.setup else { return Ok(Ok(String::new())) };
    let (tree, repository, log) = (worker.root.clone(), worker.session.root.clone(), worker.own.join(SETUP_LOG));
    let mut recorded = None;
    let result = run_setup(commands, step, trainer, &tree, &repository, &log, &mut |cmd| {
        let (child, r) = worker.spawn(cmd, Role::Build)?;
        recorded = Some(r);
        Ok(child)
    });
    if let Some(r) = recorded {
        worker.forget(&r)?;
    }
    result
}
