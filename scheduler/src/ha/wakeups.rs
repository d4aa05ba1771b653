//! The leader's ear: `LISTEN trainyard_wakeup` and hand each wake-up to the
//! engine at once. After the listening connection dropped (wake-ups may have
//! been missed), the engine re-reads the store instead.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::engine::EngineHandle;
use crate::store::{ConnectOptions, ListenEvent, ReadStore, Wakeup, WakeupListener};

/// Pause before reconnecting after the listener failed.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// Starts listening (the returned future resolves once `LISTEN` is in
/// place, so nothing committed after it is missed), then relays wake-ups to
/// `engine` until `stop` fires.
pub async fn spawn_wakeup_relay(
    url: &str,
    options: &ConnectOptions,
    store: std::sync::Arc<dyn ReadStore>,
    engine: EngineHandle,
    stop: CancellationToken,
) -> crate::store::Result<JoinHandle<()>> {
    let mut listener = WakeupListener::connect(url, options).await?;
    Ok(tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => return,
                event = listener.recv() => event,
            };
            match event {
                Ok(ListenEvent::Wakeup(w)) => deliver(&engine, w).await,
                Ok(ListenEvent::Reconnected) => catch_up(&*store, &engine).await,
                Err(e) => {
                    warn!(error = %e, "wake-up listener cannot reconnect; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(RECONNECT_PAUSE) => {}
                    }
                }
            }
        }
    }))
}

async fn deliver(engine: &EngineHandle, wakeup: Wakeup) {
    debug!(%wakeup, "wake-up");
    let result = match &wakeup {
        Wakeup::RunCreated(run) => engine.run_created_elsewhere(*run).await,
        Wakeup::DagChanged(dag) => engine.dag_changed(dag.clone()).await,
    };
    if let Err(e) = result {
        // Not ours (another installation on the database) or already gone.
        warn!(%wakeup, error = %e, "wake-up not taken");
    }
}

/// Wake-ups may have been lost: adopt unknown active runs, re-read every DAG.
async fn catch_up(store: &dyn ReadStore, engine: &EngineHandle) {
    match engine.adopt_active_runs().await {
        Ok(n) => debug!(adopted = n, "caught up after the listener reconnected"),
        Err(e) => warn!(error = %e, "cannot adopt runs after reconnecting"),
    }
    match store.list_dags().await {
        Ok(dags) => {
            for dag in dags {
                if let Err(e) = engine.dag_changed(dag.id.clone()).await {
                    warn!(dag = %dag.id, error = %e, "cannot re-read the DAG");
                }
            }
        }
        Err(e) => warn!(error = %e, "cannot list DAGs after reconnecting"),
    }
}
