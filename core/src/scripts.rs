//! The Lua scripts of the protocol, one typed field each, so a wrong name
//! fails to compile. Each script is the shared prelude followed by the
//! operation's own file (see `core/lua/`).

use std::sync::OnceLock;

use redis::Script;

macro_rules! scripts {
    ($($field:ident => $file:literal),* $(,)?) => {
        /// Every protocol script, compiled once per process.
        pub struct Scripts {
            $(
                #[doc = concat!("`core/lua/", $file, "`")]
                pub $field: Script,
            )*
        }

        impl Scripts {
            fn load() -> Self {
                Self {
                    $($field: Script::new(concat!(
                        include_str!("../lua/prelude.lua"),
                        "\n",
                        include_str!(concat!("../lua/", $file))
                    )),)*
                }
            }

            /// All scripts, for loading them ahead of pipelined use.
            pub fn all(&self) -> Vec<&Script> {
                vec![$(&self.$field),*]
            }
        }
    };
}

scripts! {
    submit => "submit.lua",
    complete => "complete.lua",
    chunk => "chunk.lua",
    heartbeat => "heartbeat.lua",
    claim => "claim.lua",
    deregister => "deregister.lua",
    cancel => "cancel.lua",
    watch => "watch.lua",
    requeue => "requeue.lua",
    set_priority => "set_priority.lua",
    pause => "pause.lua",
    purge => "purge.lua",
}

/// The process-wide script set.
pub fn scripts() -> &'static Scripts {
    static SCRIPTS: OnceLock<Scripts> = OnceLock::new();
    SCRIPTS.get_or_init(Scripts::load)
}

/// Loads every script into the server's script cache (SCRIPT LOAD), so that
/// pipelined EVALSHA calls never hit NOSCRIPT in the common case.
///
/// # Errors
/// Any Redis error.
pub async fn preload<C: redis::aio::ConnectionLike>(conn: &mut C) -> redis::RedisResult<()> {
    for script in scripts().all() {
        script.prepare_invoke().load_async(conn).await?;
    }
    Ok(())
}
