//! `rtq submit`: reads the input (text, `-` for stdin, `@FILE`), refuses a
//! queue that does not exist unless `--create`, and never waits silently
//! for a queue without a live worker: it says so at once on stderr and,
//! unless the caller said how long to wait (`--wait-for-workers`,
//! `--timeout-secs`, `--no-wait`), creates no task and exits 1.

use std::io::Read;
use std::time::Duration;

use rtq_core::{Error, TaskRequest};
use serde_json::json;

use super::task::print_stream;
use super::{note, ok_if, printable, CliError, Ctx};
use crate::SubmitArgs;

/// The input text of `INPUT`: itself, stdin for `-`, a file for `@FILE`.
///
/// # Errors
/// [`CliError::Usage`] for stdin or a file that cannot be read.
fn read_input(input: &str) -> Result<String, CliError> {
    if input == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::Usage(format!("cannot read the input from stdin: {e}")))?;
        return Ok(text);
    }
    match input.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("cannot read the input file {path:?}: {e}"))),
        None => Ok(input.to_string()),
    }
}

/// The request the flags describe, input read; called before connecting,
/// so that unreadable or invalid input fails whatever the state of Redis.
///
/// # Errors
/// [`CliError::Usage`] for unreadable input, invalid JSON as
/// [`Error::InvalidInput`].
pub(super) fn request(a: &SubmitArgs) -> Result<TaskRequest, CliError> {
    let mut req = TaskRequest::parse(&read_input(&a.input)?)?
        .priority(a.priority)
        .max_attempts(a.max_attempts)
        .retention(Duration::from_secs(a.retention_secs));
    if a.timeout_secs > 0 {
        req = req.timeout(Duration::from_secs(a.timeout_secs));
    }
    if let Some(id) = &a.id {
        req = req.id(id.clone());
    }
    for (k, v) in &a.labels {
        req = req.label(k.clone(), v.clone());
    }
    Ok(req)
}

/// Runs `rtq submit`.
/// Runs `rtq submit` with the request [`request`] built.
pub(super) async fn run(ctx: &Ctx, a: SubmitArgs, req: TaskRequest) -> Result<(), CliError> {
    let queue = a.queue.as_str();
    if let Err(e) = ctx.known(queue, true).await {
        ok_if(a.create, e)?;
        // Listed now: the client's own listing runs in the background,
        // and this process may end before it does.
        ctx.admin.register_queue(queue).await?;
    }
    check_workers(ctx, &a).await?;
    let q = ctx.client.queue(queue)?;
    if a.no_wait {
        let sub = q.submit(req).await?;
        ctx.out(
            json!({"id": sub.id, "queue": queue, "state": sub.state.as_str(), "worker": sub.worker}),
            &sub.id,
        );
    } else if a.stream {
        print_stream(ctx, q.stream(req).await?).await?;
    } else {
        let o = q.run(req).await?;
        ctx.out(
            json!({"id": o.id, "queue": queue, "state": "done", "attempt": o.attempt, "result": o.result}),
            &o.result,
        );
    }
    Ok(())
}

/// Says at once (stderr) when the queue has no live worker or is paused;
/// without a way to stop waiting, fails before anything is created.
async fn check_workers(ctx: &Ctx, a: &SubmitArgs) -> Result<(), CliError> {
    let queue = printable(&a.queue, false);
    let o = match ctx.admin.overview(&a.queue).await {
        Ok(o) => o,
        // A least-privilege client user may not read the workers: submit
        // as asked, the check is only a courtesy.
        Err(Error::PermissionDenied(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if o.workers_alive == 0 {
        note(&format!("queue {queue} has no live worker"));
        if a.no_wait {
            note("the task stays queued until a worker starts");
        } else if a.wait_for_workers {
            note("waiting for a worker (--wait-for-workers)");
        } else if a.timeout_secs > 0 {
            note(&format!(
                "waiting for a worker for at most {} s (--timeout-secs)",
                a.timeout_secs
            ));
        } else {
            return Err(CliError::Failed(format!(
                "nothing was submitted: queue {queue} has no live worker to run the task; \
                 start a worker, or pass --wait-for-workers (wait without limit), \
                 --timeout-secs S (the task ends as timed out if no worker finishes it in S s) \
                 or --no-wait (queue it and print its id)"
            )));
        }
    } else if o.paused {
        note(&format!(
            "queue {queue} is paused: the task waits until it is resumed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_is_the_text_itself_or_a_file_after_an_at_sign() {
        assert_eq!(read_input("{}").unwrap(), "{}");
        let dir = std::env::temp_dir().join(format!("rtq-input-{}", std::process::id()));
        std::fs::write(&dir, r#"{"prompt":"hi"}"#).unwrap();
        let arg = format!("@{}", dir.display());
        assert_eq!(read_input(&arg).unwrap(), r#"{"prompt":"hi"}"#);
        std::fs::remove_file(&dir).unwrap();
        assert!(matches!(read_input(&arg), Err(CliError::Usage(_))));
    }
}
