//! Serves an axum `Router` on a listener the way a socket facing the internet needs: the
//! local API and the webhook receiver both go through [`serve`]. Knows nothing of routes.
//!
//! - At most `max_connections` open at once. At the limit, a new connection closes the one
//!   that has waited longest for a request (idle, or trickling its headers), so a valid
//!   request still gets in; while every connection is inside a request, new ones wait in
//!   the kernel's backlog.
//! - A request's head must arrive whole within `header_timeout` of the connection being
//!   ready for it (hyper's `header_read_timeout`: from its opening, or from its previous
//!   answer), its body within `body_timeout` of the head (408, closed), and a connection
//!   where nothing moves for `idle_timeout` while no request is worked on is closed.
//! - `accept` failing for want of descriptors (EMFILE, ENFILE) closes the longest-waiting
//!   connection and backs off briefly instead of spinning.
//! - Both are logged at most once a minute per listener, with a count.
//! - Both listeners' limits are fitted under the process's descriptor limit with
//!   [`RESERVED_DESCRIPTORS`] kept for Basiq, SQLite and the rest ([`Budget`]).
//!
//! Times here are tokio's monotonic time, not the context's clock: they guard sockets and
//! date nothing.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::settings::{ListenerSettings, Settings};

/// Descriptors kept for everything but the listeners' connections: Basiq's connections
/// (`sweep.concurrency`, refreshes, followers, deliveries), SQLite's files (five
/// connections, three files each), the listeners, stdio and the runtime's own.
pub const RESERVED_DESCRIPTORS: u64 = 256;

/// How long `accept` rests after failing for another reason than the peer's.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// One line a minute at most, per listener and kind of trouble.
const ALARM_EVERY: Duration = Duration::from_secs(60);

/// A request's head, read buffer included, is refused above this (hyper's minimum is 8 KiB):
/// a connection trickling headers holds no more memory than this.
const MAX_HEAD: usize = 16 * 1024;

// Linux's (and every BSD's) numbers for "too many open files" (per process, system-wide).
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// One listener's limits as served: the settings, with the connection limit fitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Limits {
    fn new(settings: &ListenerSettings, max_connections: u64) -> Self {
        Self {
            max_connections: usize::try_from(max_connections.max(1)).unwrap_or(usize::MAX),
            header_timeout: settings.header_timeout,
            body_timeout: settings.body_timeout,
            idle_timeout: settings.idle_timeout,
        }
    }
}

/// Both listeners' limits, their connection limits fitted under the descriptor limit.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub api: Limits,
    pub webhooks: Limits,
}

impl Budget {
    /// From the settings and the process's soft `RLIMIT_NOFILE`; a warning says so when
    /// the connection limits had to be lowered.
    pub fn new(settings: &Settings) -> Self {
        let api = &settings.api.connections;
        let webhooks = &settings.webhooks.connections;
        let wanted = [
            settings
                .api
                .listen
                .map_or(0, |_| u64::from(api.max_connections.get())),
            settings
                .webhooks
                .listen
                .map_or(0, |_| u64::from(webhooks.max_connections.get())),
        ];
        let descriptors = descriptor_limit();
        let fitted = fit(wanted, descriptors);
        if let Some(limit) = descriptors
            && fitted != wanted
        {
            tracing::warn!(
                event = "connection_limits_lowered",
                descriptors = limit,
                api_max_connections = fitted[0],
                webhooks_max_connections = fitted[1],
                "the descriptor limit ({limit}) cannot hold api.max_connections ({}) + \
                 webhooks.max_connections ({}) + {RESERVED_DESCRIPTORS} for Basiq, SQLite and \
                 the rest: serving at most {} and {} connections; raise LimitNOFILE= or lower \
                 the settings",
                wanted[0],
                wanted[1],
                fitted[0],
                fitted[1],
            );
        }
        Self {
            api: Limits::new(api, fitted[0]),
            webhooks: Limits::new(webhooks, fitted[1]),
        }
    }
}

/// The connection limits `wanted` (0: that listener is off), lowered in proportion when
/// they and [`RESERVED_DESCRIPTORS`] do not fit in `descriptors`; a listener that is on
/// keeps at least one.
pub fn fit(wanted: [u64; 2], descriptors: Option<u64>) -> [u64; 2] {
    let total: u64 = wanted.iter().sum();
    let Some(room) = descriptors.map(|d| d.saturating_sub(RESERVED_DESCRIPTORS)) else {
        return wanted;
    };
    if total <= room {
        return wanted;
    }
    wanted.map(|w| {
        if w == 0 {
            0
        } else {
            u64::try_from(u128::from(w) * u128::from(room) / u128::from(total))
                .unwrap_or(w)
                .max(1)
        }
    })
}

/// The soft limit on open descriptors (`/proc/self/limits`); `None` when unlimited or
/// unknown (not Linux).
pub fn descriptor_limit() -> Option<u64> {
    parse_open_files(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

fn parse_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Serves `router` on `listener` under `limits` until `cancel`; `name` names the listener
/// in log lines. Then closes the connections waiting for a request and lets the ones
/// inside a request finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    name: &'static str,
    limits: Limits,
    cancel: CancellationToken,
) {
    let shared = Arc::new(Shared {
        router,
        limits,
        table: Arc::default(),
        full: Alarm::default(),
        failing: Alarm::default(),
        name,
    });
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                shared.accept_failed(&e, &cancel).await;
                continue;
            }
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                shared.at_limit();
                // The evicted connection gives its permit back as it closes; with every
                // connection inside a request, this waits for the first to end.
                tokio::select! {
                    () = cancel.cancelled() => break,
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                }
            }
        };
        connections.spawn(connection(stream, shared.clone(), permit, cancel.clone()));
    }
    connections.close();
    connections.wait().await;
}

/// What every connection of one listener shares.
struct Shared {
    router: Router,
    limits: Limits,
    table: Arc<Table>,
    /// The limit was hit.
    full: Alarm,
    /// `accept` failed.
    failing: Alarm,
    name: &'static str,
}

impl Shared {
    /// A new connection found every slot taken: the longest-waiting one makes room.
    fn at_limit(&self) {
        let evicted = self.table.evict_longest_waiting();
        if let Some(count) = self.full.note() {
            tracing::warn!(
                event = "connection_limit",
                listener = self.name,
                max_connections = self.limits.max_connections,
                count,
                "{}: {count} new connection(s) found all {} connections open since the last \
                 such line; {}",
                self.name,
                self.limits.max_connections,
                if evicted {
                    "the ones waiting longest for a request were closed to make room"
                } else {
                    "every connection was inside a request, so the new ones wait"
                },
            );
        }
    }

    /// `accept` failed: the peer's trouble is ignored; anything else (descriptors run out)
    /// is logged, a waiting connection closed when descriptors ran out, and the loop rests.
    async fn accept_failed(&self, e: &std::io::Error, cancel: &CancellationToken) {
        use std::io::ErrorKind;
        if matches!(
            e.kind(),
            ErrorKind::ConnectionAborted
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionRefused
                | ErrorKind::Interrupted
        ) {
            return;
        }
        let out_of_descriptors = matches!(e.raw_os_error(), Some(EMFILE | ENFILE));
        if out_of_descriptors {
            self.table.evict_longest_waiting();
        }
        if let Some(count) = self.failing.note() {
            tracing::error!(
                event = "accept_failed",
                listener = self.name,
                count,
                out_of_descriptors,
                error = %e,
                "{}: accepting connections failed {count} time(s) since the last such line \
                 ({e}); resting {} ms each time",
                self.name,
                ACCEPT_BACKOFF.as_millis(),
            );
        }
        tokio::select! {
            () = cancel.cancelled() => {}
            () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
        }
    }
}

/// Counts a kind of trouble and says when a line is due: at most once per [`ALARM_EVERY`].
#[derive(Default)]
struct Alarm {
    last: Mutex<Option<Instant>>,
    count: AtomicU64,
}

impl Alarm {
    /// One more; `Some(count since the last line)` when a line is due now.
    fn note(&self) -> Option<u64> {
        self.note_at(Instant::now())
    }

    fn note_at(&self, now: Instant) -> Option<u64> {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < ALARM_EVERY) {
            return None;
        }
        *last = Some(now);
        Some(self.count.swap(0, Ordering::Relaxed))
    }
}

/// The open connections of one listener.
struct Table {
    /// The reference for every slot's times, so they compare across connections.
    epoch: Instant,
    next: AtomicU64,
    open: Mutex<BTreeMap<u64, Arc<Slot>>>,
}

impl Default for Table {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            next: AtomicU64::default(),
            open: Mutex::default(),
        }
    }
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Slot>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new connection's slot; it leaves the table when the returned guard drops.
    fn enter(self: &Arc<Self>) -> (Arc<Slot>, Leave) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot::new(self.epoch));
        self.lock().insert(id, slot.clone());
        (
            slot,
            Leave {
                table: self.clone(),
                id,
            },
        )
    }

    /// Closes the connection that has waited longest for a request; false when every one
    /// is inside a request.
    fn evict_longest_waiting(&self) -> bool {
        let open = self.lock();
        let longest = open
            .values()
            .filter(|s| !s.busy.load(Ordering::Relaxed) && !s.close.is_cancelled())
            .min_by_key(|s| s.waiting_since.load(Ordering::Relaxed));
        match longest {
            Some(slot) => {
                slot.close.cancel();
                true
            }
            None => false,
        }
    }
}

/// Takes a connection out of its table (also when its task panics).
struct Leave {
    table: Arc<Table>,
    id: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        self.table.lock().remove(&self.id);
    }
}

/// One open connection, as the accept loop and its idle watch see it.
struct Slot {
    /// The reference for the times below (its table's).
    epoch: Instant,
    /// A request is being worked on: neither idle nor evictable.
    busy: AtomicBool,
    /// Milliseconds since the epoch: when the connection became ready for its current
    /// request (opened, or its last answer given).
    waiting_since: AtomicU64,
    /// Milliseconds since the epoch: the last byte read or written, or the last answer.
    last_moved: AtomicU64,
    /// Fired to close the connection (evicted).
    close: CancellationToken,
}

impl Slot {
    /// A connection opened now: waiting for its first request.
    fn new(epoch: Instant) -> Self {
        let now = millis_since(epoch);
        Self {
            epoch,
            busy: AtomicBool::new(false),
            waiting_since: AtomicU64::new(now),
            last_moved: AtomicU64::new(now),
            close: CancellationToken::new(),
        }
    }

    fn now(&self) -> u64 {
        millis_since(self.epoch)
    }

    fn moved(&self) {
        self.last_moved.store(self.now(), Ordering::Relaxed);
    }

    fn begin_request(&self) {
        self.busy.store(true, Ordering::Relaxed);
        self.moved();
    }

    /// The answer is given: the connection waits for its next request from now.
    fn end_request(&self) {
        let now = self.now();
        self.waiting_since.store(now, Ordering::Relaxed);
        self.last_moved.store(now, Ordering::Relaxed);
        self.busy.store(false, Ordering::Relaxed);
    }

    /// Resolves once nothing moved for `idle` while no request was worked on.
    async fn idle(&self, idle: Duration) {
        loop {
            let last = self.epoch + Duration::from_millis(self.last_moved.load(Ordering::Relaxed));
            let busy = self.busy.load(Ordering::Relaxed);
            if !busy && Instant::now() >= last + idle {
                return;
            }
            let next = if busy {
                Instant::now() + idle
            } else {
                last + idle
            };
            tokio::time::sleep_until(next).await;
        }
    }
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// How a connection's task ended, when not by itself.
enum End {
    Idle,
    Evicted,
    Stopping,
}

/// One connection: HTTP/1 with the header timeout, until it ends, idles, is evicted, or the
/// listener stops (then a request in flight finishes first).
async fn connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
    cancel: CancellationToken,
) {
    let (slot, _leave) = shared.table.enter();
    let io = TokioIo::new(Watched {
        io: stream,
        slot: slot.clone(),
    });
    let service = {
        let shared = shared.clone();
        let slot = slot.clone();
        hyper::service::service_fn(move |request| answer(shared.clone(), slot.clone(), request))
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(shared.limits.header_timeout)
        .max_buf_size(MAX_HEAD);
    let conn = http.serve_connection(io, service);
    tokio::pin!(conn);
    let end = tokio::select! {
        served = conn.as_mut() => {
            if let Err(e) = served {
                tracing::debug!(listener = shared.name, error = %e, "connection ended with an error");
            }
            return;
        }
        () = slot.idle(shared.limits.idle_timeout) => End::Idle,
        () = slot.close.cancelled() => End::Evicted,
        () = cancel.cancelled() => End::Stopping,
    };
    match end {
        End::Stopping if slot.busy.load(Ordering::Relaxed) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
        // Dropped: the socket closes.
        End::Idle | End::Evicted | End::Stopping => {}
    }
}

/// One request: its body on the deadline, the router, and the slot told when it begins and
/// ends. A body that missed its deadline is answered 408 and the connection closed.
async fn answer(
    shared: Arc<Shared>,
    slot: Arc<Slot>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    slot.begin_request();
    let late = Arc::new(AtomicBool::new(false));
    let deadline = shared.limits.body_timeout;
    let request = request.map(|body| {
        Body::new(Deadline {
            body,
            timer: Box::pin(tokio::time::sleep(deadline)),
            late: late.clone(),
        })
    });
    let response = shared.router.clone().oneshot(request).await;
    slot.end_request();
    if late.load(Ordering::Relaxed) {
        let mut response = (
            StatusCode::REQUEST_TIMEOUT,
            axum::Json(serde_json::json!({
                "error": format!(
                    "the request body did not arrive within {} ({}.body_timeout)",
                    crate::settings::fmt_duration(deadline),
                    shared.name
                )
            })),
        )
            .into_response();
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        return Ok(response);
    }
    response
}

/// A request body that must arrive whole before its timer ends.
struct Deadline {
    body: Incoming,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// Set when the timer ended first.
    late: Arc<AtomicBool>,
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.timer.as_mut().poll(cx).is_ready() {
            this.late.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err("the request body did not arrive in time".into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A socket that tells its slot whenever bytes move either way.
struct Watched {
    io: TcpStream,
    slot: Arc<Slot>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.slot.moved();
        }
        read
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.slot.moved();
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.slot.moved();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Every error's body, on both listeners (the local API's and the webhook receiver's).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limits_are_lowered_in_proportion_to_fit_the_descriptors() {
        // The defaults under the unit's LimitNOFILE: as configured.
        assert_eq!(fit([256, 1024], Some(8192)), [256, 1024]);
        // Under systemd's default of 1,024: 768 left, shared 1:4.
        assert_eq!(fit([256, 1024], Some(1024)), [153, 614]);
        // The receiver off: the API may have it all.
        assert_eq!(fit([256, 0], Some(1024)), [256, 0]);
        assert_eq!(fit([2048, 0], Some(1024)), [768, 0]);
        // Unknown or unlimited: as configured; hopeless: one each.
        assert_eq!(fit([256, 1024], None), [256, 1024]);
        assert_eq!(fit([256, 1024], Some(100)), [1, 1]);
    }

    #[test]
    fn the_soft_open_files_limit_is_read_from_proc_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max cpu time              unlimited            unlimited            seconds   \n\
                    Max open files            1024                 524288               files     \n";
        assert_eq!(parse_open_files(text), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_open_files(unlimited), None);
        assert!(descriptor_limit().is_some_and(|n| n > 0));
    }

    #[test]
    fn an_alarm_says_once_a_minute_how_many_times_it_rang() {
        let alarm = Alarm::default();
        let start = Instant::now();
        assert_eq!(alarm.note_at(start), Some(1));
        for s in 1..=5 {
            assert_eq!(alarm.note_at(start + Duration::from_secs(s)), None);
        }
        assert_eq!(alarm.note_at(start + ALARM_EVERY), Some(6));
    }

    #[test]
    fn the_connection_waiting_longest_for_a_request_is_evicted_never_one_inside_a_request() {
        let table = Arc::new(Table::default());
        let (first, _a) = table.enter();
        let (second, _b) = table.enter();
        let (third, _c) = table.enter();
        first.waiting_since.store(10, Ordering::Relaxed);
        second.waiting_since.store(5, Ordering::Relaxed);
        third.waiting_since.store(1, Ordering::Relaxed);
        third.begin_request();
        assert!(table.evict_longest_waiting());
        assert!(second.close.is_cancelled() && !first.close.is_cancelled());
        assert!(table.evict_longest_waiting());
        assert!(first.close.is_cancelled());
        assert!(
            !table.evict_longest_waiting(),
            "the last one is inside a request"
        );
        assert!(!third.close.is_cancelled());
        drop(_a);
        assert_eq!(table.lock().len(), 2);
    }
}
