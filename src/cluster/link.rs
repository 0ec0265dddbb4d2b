//! The link to Redis: connect, subscribe, sync, then follow; on any failure serve on local
//! state, warn once per outage, reconnect with backoff and sync again.
//!
//! One task owns both connections (a multiplexed command connection and a pub/sub one), so
//! a slow Redis only ever slows this task: every command has a timeout, and the request
//! path only queues to it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use tokio::sync::{mpsc, watch};

use super::wire::{self, Replica, WindowMsg, MERGE_SCRIPT, REPLICA_TTL};
use super::{Cluster, Outbound};

/// Budget of one connection attempt and of each command.
pub(super) const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// Heartbeat period (the heartbeat lives [`REPLICA_TTL`]).
const BEAT: Duration = Duration::from_secs(5);
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Keys read by one sync at most (every key has a TTL; this bounds one pass).
const MAX_SYNC_KEYS: usize = 20_000;
/// Replicas listed at most.
const MAX_REPLICAS: usize = 256;

/// Why a session ended.
enum End {
    Stop,
    Lost(String),
}

pub(super) async fn run(
    cluster: Arc<Cluster>,
    mut inbox: mpsc::Receiver<Outbound>,
    mut stop: watch::Receiver<bool>,
) {
    let url = cluster.config.redis_url.clone();
    let redact = Scrub::new(url.expose());
    let client = match redis::Client::open(url.expose()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(from = %cluster.config.redis_url_from, error = %redact.text(&e.to_string()), "cluster: the Redis URL is not usable; serving on local state only");
            cluster.ready.send_replace(true);
            return;
        }
    };
    let script = redis::Script::new(MERGE_SCRIPT);
    let mut backoff = BACKOFF_MIN;
    let mut in_outage = false;
    loop {
        let end = match session(&cluster, &client, &script, &mut inbox, &mut stop).await {
            Ok(end) => {
                backoff = BACKOFF_MIN;
                end
            }
            Err(e) => End::Lost(e),
        };
        // A session that got connected ends an outage: the next failure is a new one.
        if cluster.connected() {
            in_outage = false;
            backoff = BACKOFF_MIN;
        }
        cluster.set_connected(false);
        cluster.set_conn(None);
        cluster.ready.send_replace(true);
        match end {
            End::Stop => return,
            End::Lost(why) => {
                if !in_outage {
                    tracing::warn!(error = %redact.text(&why), "cluster: Redis unreachable; serving on local state, reconnecting");
                    in_outage = true;
                }
            }
        }
        // While away, queued windows are dropped: the next session pushes every local one.
        while inbox.try_recv().is_ok() {}
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            () = stopped(&mut stop) => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection: subscribe, push what this replica knows, load what the cluster knows,
/// then follow until something fails or `stop`.
async fn session(
    cluster: &Arc<Cluster>,
    client: &redis::Client,
    script: &redis::Script,
    inbox: &mut mpsc::Receiver<Outbound>,
    stop: &mut watch::Receiver<bool>,
) -> Result<End, String> {
    let prefix = cluster.config.key_prefix.as_str();
    let channel = format!("{prefix}events");
    let mut conn = connect(client).await?;
    let mut pubsub = tokio::time::timeout(COMMAND_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(COMMAND_TIMEOUT, pubsub.subscribe(&channel))
        .await
        .map_err(|_| "subscribe timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let mut messages = pubsub.into_on_message();

    // Subscribed first, so nothing published during the sync is missed.
    cluster.resync.store(false, Ordering::Relaxed);
    push_local(cluster, &mut conn, script, &channel).await?;
    sync(cluster, &mut conn).await?;
    beat(cluster, &mut conn).await?;
    cluster.slots.attach(Some(conn.clone()));
    cluster.set_conn(Some(conn.clone()));
    cluster.set_connected(true);
    cluster.ready.send_replace(true);
    tracing::info!(replica = %cluster.me.id, "cluster: connected to Redis, shared state loaded");

    let mut tick = tokio::time::interval(BEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    loop {
        tokio::select! {
            msg = messages.next() => {
                let Some(msg) = msg else { return Ok(End::Lost("pub/sub connection closed".into())) };
                if let Some(m) = WindowMsg::parse(msg.get_payload_bytes()) {
                    if m.from != cluster.me.id {
                        cluster.note_event(false);
                        let key = m.key(prefix);
                        cluster.learn(key, m);
                    }
                }
            }
            out = inbox.recv() => {
                let Some(Outbound::Window(m)) = out else { return Ok(End::Stop) };
                share(cluster, &mut conn, script, &channel, &m).await?;
            }
            _ = tick.tick() => {
                if cluster.resync.swap(false, Ordering::Relaxed) {
                    push_local(cluster, &mut conn, script, &channel).await?;
                }
                beat(cluster, &mut conn).await?;
            }
            () = stopped(stop) => {
                let mut gone = redis::cmd("ZREM");
                gone.arg(Replica::key(prefix)).arg(cluster.me.member());
                let _ = query::<()>(&mut conn, gone).await;
                return Ok(End::Stop);
            }
        }
    }
}

/// Writes one window (later end wins, on the server) and publishes it.
async fn share(
    cluster: &Cluster,
    conn: &mut MultiplexedConnection,
    script: &redis::Script,
    channel: &str,
    m: &WindowMsg,
) -> Result<(), String> {
    let text = serde_json::to_string(m).map_err(|e| e.to_string())?;
    let key = m.key(&cluster.config.key_prefix);
    let mut call = script.prepare_invoke();
    call.key(&key).arg(m.end).arg(text).arg(channel);
    match tokio::time::timeout(COMMAND_TIMEOUT, call.invoke_async::<redis::Value>(conn)).await {
        Ok(Ok(redis::Value::Int(1))) => {
            cluster.note_event(true);
            Ok(())
        }
        // Another replica's window ends later: keep that one here too.
        Ok(Ok(redis::Value::BulkString(stored))) => {
            if let Some(other) = WindowMsg::parse(&stored) {
                cluster.learn(key, other);
            }
            Ok(())
        }
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(SLOW.into()),
    }
}

pub(super) const SLOW: &str = "Redis did not answer in time";

/// A command connection whose connect and every answer are bounded by [`COMMAND_TIMEOUT`].
async fn connect(client: &redis::Client) -> Result<MultiplexedConnection, String> {
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(COMMAND_TIMEOUT))
        .set_response_timeout(Some(COMMAND_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .map_err(|e| e.to_string())
}

/// Runs one command within [`COMMAND_TIMEOUT`].
pub(super) async fn query<T: redis::FromRedisValue>(
    conn: &mut MultiplexedConnection,
    cmd: redis::Cmd,
) -> Result<T, String> {
    tokio::time::timeout(COMMAND_TIMEOUT, cmd.query_async::<T>(conn))
        .await
        .map_err(|_| SLOW.to_owned())?
        .map_err(|e| e.to_string())
}

/// Shares every window this replica holds (after a gap, the others may not have them).
async fn push_local(
    cluster: &Cluster,
    conn: &mut MultiplexedConnection,
    script: &redis::Script,
    channel: &str,
) -> Result<(), String> {
    for m in cluster.local_windows() {
        share(cluster, conn, script, channel, &m).await?;
    }
    Ok(())
}

/// Loads every shared window.
///
/// Credential-wide windows and disabled lanes first, so that model windows (whose names
/// clients pick) can never crowd them out of the bound on one pass.
async fn sync(cluster: &Cluster, conn: &mut MultiplexedConnection) -> Result<(), String> {
    let prefix = &cluster.config.key_prefix;
    let mut budget = MAX_SYNC_KEYS;
    for scope in ["disabled", "credential", "model:*"] {
        let pattern = format!("{prefix}cd:*:{scope}");
        let found = scan_values(conn, &pattern, budget).await?;
        budget = budget.saturating_sub(found.len());
        for (key, value) in found {
            if let Some(m) = WindowMsg::parse(&value) {
                cluster.learn(key, m);
            }
        }
    }
    Ok(())
}

/// Writes this replica's heartbeat and reads the others' (one atomic round trip).
async fn beat(cluster: &Cluster, conn: &mut MultiplexedConnection) -> Result<(), String> {
    let replicas = beats(conn, &cluster.config.key_prefix, Some(&cluster.me)).await?;
    *cluster.replicas.lock().unwrap_or_else(|e| e.into_inner()) = replicas;
    Ok(())
}

/// The replicas that beat in the last 60 s (at most [`MAX_REPLICAS`]), after recording
/// `me`'s beat when given.
async fn beats(
    conn: &mut MultiplexedConnection,
    prefix: &str,
    me: Option<&Replica>,
) -> Result<Vec<Replica>, String> {
    let key = Replica::key(prefix);
    let now = wire::now_ms();
    let ttl = REPLICA_TTL.as_millis() as i64;
    let mut pipe = redis::pipe();
    pipe.atomic();
    if let Some(me) = me {
        pipe.cmd("ZADD")
            .arg(&key)
            .arg(now)
            .arg(me.member())
            .ignore();
        pipe.cmd("PEXPIRE").arg(&key).arg(ttl).ignore();
    }
    pipe.cmd("ZREMRANGEBYSCORE")
        .arg(&key)
        .arg("-inf")
        .arg(now - ttl)
        .ignore();
    pipe.cmd("ZREVRANGE")
        .arg(&key)
        .arg(0)
        .arg(MAX_REPLICAS - 1)
        .arg("WITHSCORES");
    let (flat,): (Vec<String>,) = tokio::time::timeout(COMMAND_TIMEOUT, pipe.query_async(conn))
        .await
        .map_err(|_| SLOW.to_owned())?
        .map_err(|e| e.to_string())?;
    let mut out: Vec<Replica> = flat
        .chunks(2)
        .filter_map(|pair| {
            let [member, score] = pair else { return None };
            let mut r: Replica = serde_json::from_str(member).ok()?;
            r.beat = score.parse::<f64>().ok()? as i64;
            Some(r)
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// `SCAN` + `MGET` for keys matching `pattern`, at most `limit`, each value at most
/// [`wire::MAX_MESSAGE`] bytes (longer ones are skipped).
async fn scan_values(
    conn: &mut MultiplexedConnection,
    pattern: &str,
    limit: usize,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(500);
        let (next, keys) = query::<(u64, Vec<String>)>(conn, scan).await?;
        if !keys.is_empty() {
            let mut get = redis::cmd("MGET");
            get.arg(&keys);
            let values = query::<Vec<Option<Vec<u8>>>>(conn, get).await?;
            for (k, v) in keys.into_iter().zip(values) {
                if let Some(v) = v.filter(|v| v.len() <= wire::MAX_MESSAGE) {
                    out.push((k, v));
                }
            }
        }
        if next == 0 || out.len() >= limit {
            out.truncate(limit);
            return Ok(out);
        }
        cursor = next;
    }
}

/// What `keygate cluster status` shows: the replicas seen and the shared windows.
#[derive(Debug)]
pub struct Inspection {
    /// Replicas with a live heartbeat.
    pub replicas: Vec<Replica>,
    /// Shared windows with time left.
    pub windows: Vec<WindowMsg>,
}

/// Connects once and reads the cluster's state (for the CLI).
pub async fn inspect(config: &crate::config::ClusterConfig) -> Result<Inspection, String> {
    let redact = Scrub::new(config.redis_url.expose());
    let fail = |e: String| redact.text(&e);
    let client = redis::Client::open(config.redis_url.expose()).map_err(|e| fail(e.to_string()))?;
    let mut conn = connect(&client).await.map_err(fail)?;
    let replicas = beats(&mut conn, &config.key_prefix, None)
        .await
        .map_err(fail)?;
    let pattern = format!("{}cd:*", config.key_prefix);
    let now = wire::now_ms();
    let mut windows: Vec<WindowMsg> = scan_values(&mut conn, &pattern, MAX_SYNC_KEYS)
        .await
        .map_err(fail)?
        .into_iter()
        .filter_map(|(_, v)| WindowMsg::parse(&v))
        .filter(|m| m.end > now)
        .collect();
    windows.sort_by_key(|m| std::cmp::Reverse(m.end));
    Ok(Inspection { replicas, windows })
}

/// Keeps the URL's password out of messages: a Redis error could quote the URL.
struct Scrub {
    password: Option<String>,
}

impl Scrub {
    fn new(url: &str) -> Self {
        let authority = url.split_once("://").map_or("", |(_, rest)| {
            rest.split(['/', '?', '#']).next().unwrap_or("")
        });
        let password = authority
            .rsplit_once('@')
            .and_then(|(user, _)| user.split_once(':').map(|(_, p)| p.to_owned()))
            .or_else(|| authority.rsplit_once('@').map(|(u, _)| u.to_owned()))
            .filter(|p| !p.is_empty());
        Self { password }
    }

    fn text(&self, msg: &str) -> String {
        match &self.password {
            Some(p) => msg.replace(p.as_str(), "***"),
            None => msg.to_owned(),
        }
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
