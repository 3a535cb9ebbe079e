//! The terminal: set up (ratatui restores it on panic), the event loop,
//! restore. Keys come from a thread reading crossterm events; data from the
//! background fetcher; the UI never waits on the network.

use std::time::Duration;

use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use rtq_core::{redact_url, ClientConfig};
use tokio::sync::{mpsc, watch};

use crate::fetch::{self, Action};
use crate::state::{App, Effect};
use crate::Cli;

/// Runs the console until the user quits.
///
/// # Errors
/// Terminal I/O errors (the terminal is restored first).
pub async fn run(cli: &Cli, redis: &str, config: ClientConfig) -> anyhow::Result<()> {
    let mut terminal = ratatui::init();
    let result = event_loop(&mut terminal, cli, redis, config).await;
    ratatui::restore();
    result
}

async fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    cli: &Cli,
    redis: &str,
    config: ClientConfig,
) -> anyhow::Result<()> {
    let mut app = App::new(redact_url(redis), cli.read_only);
    app.refresh = Duration::from_millis(cli.refresh_ms.max(100));
    app.no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let (plan_tx, plan_rx) = watch::channel(app.plan());
    let (action_tx, action_rx) = mpsc::channel::<Action>(16);
    let (data_tx, mut data_rx) = mpsc::channel(64);
    let fetcher = tokio::spawn(fetch::run(
        redis.to_string(),
        config,
        cli.read_only,
        Duration::from_millis(cli.refresh_ms.max(100)),
        plan_rx,
        action_rx,
        data_tx,
    ));
    let (key_tx, mut key_rx) = mpsc::channel(64);
    std::thread::spawn(move || loop {
        match event::poll(Duration::from_millis(200)) {
            Ok(true) => match event::read() {
                Ok(Event::Key(k)) if k.kind != KeyEventKind::Release => {
                    let quit =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if key_tx
                        .blocking_send(if quit { None } else { Some(k.code) })
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            },
            Ok(false) => {
                if key_tx.is_closed() {
                    return;
                }
            }
            Err(_) => return,
        }
    });
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    while !app.quit {
        app.set_screen_height(terminal.size()?.height);
        terminal.draw(|f| crate::render::draw(f, &app))?;
        tokio::select! {
            key = key_rx.recv() => match key {
                Some(Some(code)) => match app.on_key(code) {
                    Some(Effect::Action(action)) => {
                        app.set_status("working ...", false);
                        let _ = action_tx.try_send(action);
                    }
                    Some(Effect::Refresh) => {}
                    None => {}
                },
                Some(None) | None => app.quit = true,
            },
            Some(data) = data_rx.recv() => app.on_fetched(data),
            _ = tick.tick() => app.tick(std::time::Instant::now()),
        }
        // Rows moving on screen update the plan without waking the fetcher
        // (see `Plan::same_reads`).
        plan_tx.send_if_modified(|p| {
            let next = app.plan();
            let wake = !p.same_reads(&next);
            *p = next;
            wake
        });
    }
    fetcher.abort();
    Ok(())
}
