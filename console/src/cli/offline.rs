//! The commands that need no Redis: `rtq acl`, `rtq keygen`,
//! `rtq completions` and `rtq man`. Each returns the process exit code.

use std::io::Write;

use clap::CommandFactory;
use serde_json::json;

use super::{json::document, print_line, report, EXIT_FAILED, EXIT_USAGE};
use crate::{AclRole, Cli};

/// `rtq acl ROLE`: prints the `ACL SETUSER` line of a least-privilege user
/// (as JSON with `json`: role, user, line).
pub fn acl(role: AclRole, queue: Option<&str>, user: Option<&str>, json: bool) -> i32 {
    let role: rtq_core::acl::Role = role.into();
    match rtq_core::acl::setuser(role, queue, user) {
        Ok(line) if json => {
            let user = user.map_or_else(|| role.user(queue), str::to_string);
            print_line(document(
                json!({"role": role.as_str(), "user": user, "queue": queue, "setuser": line}),
            ));
            0
        }
        Ok(line) => {
            print_line(line);
            0
        }
        Err(e) => {
            report(&e);
            EXIT_USAGE
        }
    }
}

/// `rtq keygen FILE`: writes a new signing key (owner-only, never over an
/// existing file) and prints its verify key (as JSON with `json`).
pub fn keygen(file: &std::path::Path, json: bool) -> i32 {
    use std::os::unix::fs::OpenOptionsExt;
    let (key, pem) = match rtq_core::signing::SigningKey::generate_pem() {
        Ok(k) => k,
        Err(e) => {
            report(&e);
            return EXIT_FAILED;
        }
    };
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .and_then(|mut f| f.write_all(pem.as_bytes()));
    if let Err(e) = written {
        report(&format!("cannot write {}: {e}", file.display()));
        return EXIT_FAILED;
    }
    let verify = key.verify_key().to_hex();
    if json {
        print_line(document(
            json!({"file": file.display().to_string(), "verify_key": verify}),
        ));
    } else {
        print_line(verify);
    }
    0
}

/// `rtq completions SHELL`: the completion script, generated from the
/// command-line definition.
pub fn completions(shell: clap_complete::Shell) -> i32 {
    // Into a buffer first: clap_complete panics when its writer fails (a
    // reader that closed the pipe early).
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "rtq", &mut out);
    let _ = std::io::stdout().write_all(&out);
    0
}

/// `rtq man`: the manual page (roff), generated from the command-line
/// definition, with one section per command.
pub fn man() -> i32 {
    let cmd = Cli::command();
    let mut out = Vec::new();
    let rendered = clap_mangen::Man::new(cmd.clone())
        .render(&mut out)
        .and_then(|()| {
            // clap_mangen renders one page per command; the subcommands'
            // own options follow as sections of the same page.
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                let man = clap_mangen::Man::new(sub.clone());
                writeln!(out, ".SH \"RTQ {}\"", sub.get_name().to_uppercase())?;
                man.render_description_section(&mut out)?;
                man.render_options_section(&mut out)?;
            }
            Ok(())
        });
    match rendered {
        // A reader that closed the pipe early is not an error worth a
        // message.
        Ok(()) => {
            let _ = std::io::stdout().write_all(&out);
            0
        }
        Err(e) => {
            report(&format!("cannot write the manual page: {e}"));
            EXIT_FAILED
        }
    }
}
