//! Bad input and a misbehaving service: invalid options and missing builder parts are typed errors naming the
//! field; a service that answers outside the protocol (a real tonic server on 127.0.0.1 implementing the
//! generated `TunnelService` with protocol-violating data) stops the worker with a typed `Malformed` error, or
//! makes the channel resync, as the protocol says. Nothing panics.

mod tunnel_worker_common;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbor::registry::Registry;
use arbor::supervisor::{DynamicSupervisor, DynamicSupervisorOptions};
use arbor::tunnel::source::{
    ChannelLease, CheckpointInfo, ReadBatch, ReportedChannel, ServerChannel, Session,
};
use arbor::tunnel::{TunnelError, TunnelExit, TunnelOptions, TunnelSource, TunnelWorker};
use arbor_proto::tunnel::v1;
use arbor_proto::tunnel::v1::tunnel_service_server::{TunnelService, TunnelServiceServer};
use futures::future::BoxFuture;
use futures::FutureExt;
use futures::Stream;
use tonic::{Request, Response, Status};
use tunnel_worker_common::*;

fn invalid_field(result: Result<impl std::fmt::Debug, TunnelError>) -> String {
    match result {
        Err(TunnelError::InvalidOptions { field, .. }) => field,
        other => panic!("expected InvalidOptions, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_builder_without_connection_or_subscriber_or_with_bad_options_is_refused_naming_the_field() {
    let server = TestServer::memory().await;
    let options = || fast_options("t-1");
    // nothing is started: no connection needed for the first check
    let no_connection = TunnelWorker::builder(options())
        .run_subscriber(Recorder::default())
        .start()
        .await;
    assert_eq!(invalid_field(no_connection), "connection");
    let no_subscriber = TunnelWorker::builder(options())
        .connection(connection(&server.url).await)
        .start()
        .await;
    assert_eq!(invalid_field(no_subscriber), "subscriber");
    let bad_timeout =
        TunnelWorker::builder(options().heartbeat(Duration::from_secs(1), Duration::from_millis(500)))
            .connection(connection(&server.url).await)
            .run_subscriber(Recorder::default())
            .start()
            .await;
    assert_eq!(invalid_field(bad_timeout), "heartbeat_timeout");
    let no_tunnel = TunnelWorker::builder(TunnelOptions::default())
        .connection(connection(&server.url).await)
        .run_subscriber(Recorder::default())
        .start()
        .await;
    assert_eq!(invalid_field(no_tunnel), "tunnel_id");

    // the same through a supervisor: refused before anything starts, with the same typed error
    let supervisor = DynamicSupervisor::start(DynamicSupervisorOptions::default())
        .await
        .unwrap();
    let under = TunnelWorker::builder(options().read_batch_size(0))
        .connection(connection(&server.url).await)
        .run_subscriber(Recorder::default())
        .start_under(&supervisor)
        .await;
    assert_eq!(invalid_field(under), "read_batch_size");
    let spec = TunnelWorker::builder(options()).child_spec("tunnel");
    assert_eq!(invalid_field(spec.map(|(_, handle)| handle)), "connection");
    assert_eq!(supervisor.count_children().await.unwrap().active, 0);

    // the serde form names the field too
    let options: TunnelOptions =
        serde_json::from_str(r#"{"tunnel_id":"t","heartbeat_interval":"1s","heartbeat_timeout":"2s"}"#)
            .unwrap();
    assert!(matches!(
        options.validate(),
        Err(TunnelError::InvalidOptions { ref field, .. }) if field == "heartbeat_interval"
    ));
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
    server.stop().await;
}

/// How the fake service breaks the protocol.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// ConnectTunnel answers an empty client id.
    EmptyClientId,
    /// Heartbeat answers channel 0 with status UNSPECIFIED.
    UnspecifiedStatus,
    /// Heartbeat answers channel 0 as CLOSE (a status a client never owns).
    ClosedButListed,
    /// GetCheckpoint answers channel type UNSPECIFIED.
    UnspecifiedChannelType,
    /// ReadRecords skips 5 records, always.
    RecordsOutOfSequence,
    /// ReadRecords skips 5 records the first time only.
    RecordsOutOfSequenceOnce,
    /// Channel 0 is a sealed BASE channel whose records are all readable, and every Checkpoint fails as
    /// UNAVAILABLE: its end is never checkpointed.
    FinishedButCheckpointFails,
    /// ReadRecords fails with OUT_OF_RANGE although GetCheckpoint says the position is retained (as tonic's own
    /// status for a message over the client's decode limit).
    OutOfRangeWhileRetained,
}

/// A tunnel service that follows the protocol except for its fault, on one STREAM channel of 10 records.
struct Faulty {
    fault: Fault,
    reads: Arc<Mutex<u32>>,
    checkpoints: Arc<Mutex<Vec<u64>>>,
    /// The channel reports of every heartbeat: (channel, status, version).
    reports: Arc<Mutex<Vec<(u32, v1::ChannelStatus, i64)>>>,
}

const END: u64 = 10;

type ReadStream = Pin<Box<dyn Stream<Item = Result<v1::ReadRecordsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl TunnelService for Faulty {
    type ReadRecordsStream = ReadStream;

    async fn connect_tunnel(
        &self,
        _: Request<v1::ConnectTunnelRequest>,
    ) -> Result<Response<v1::ConnectTunnelResponse>, Status> {
        let client_id = if self.fault == Fault::EmptyClientId {
            String::new()
        } else {
            "c-faulty".into()
        };
        Ok(Response::new(v1::ConnectTunnelResponse {
            client_id,
            heartbeat_timeout_ms: 10_000,
            ..Default::default()
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        self.reports.lock().unwrap().extend(
            request
                .into_inner()
                .channels
                .iter()
                .map(|c| (c.channel_id, c.status(), c.version)),
        );
        let status = match self.fault {
            Fault::UnspecifiedStatus => v1::ChannelStatus::Unspecified,
            Fault::ClosedButListed => v1::ChannelStatus::Close,
            _ => v1::ChannelStatus::Open,
        };
        Ok(Response::new(v1::HeartbeatResponse {
            channels: vec![v1::ChannelState {
                channel_id: 0,
                status: status.into(),
                version: 1,
                channel_type: v1::ChannelType::Stream.into(),
            }],
        }))
    }

    async fn get_checkpoint(
        &self,
        _: Request<v1::GetCheckpointRequest>,
    ) -> Result<Response<v1::GetCheckpointResponse>, Status> {
        let channel_type = match self.fault {
            Fault::UnspecifiedChannelType => v1::ChannelType::Unspecified,
            Fault::FinishedButCheckpointFails => v1::ChannelType::Base,
            _ => v1::ChannelType::Stream,
        };
        Ok(Response::new(v1::GetCheckpointResponse {
            checkpoint_sequence_number: self.checkpoints.lock().unwrap().last().copied().unwrap_or(0),
            first_retained_sequence_number: 0,
            end_sequence_number: END,
            channel_type: channel_type.into(),
            finished: false,
        }))
    }

    async fn read_records(
        &self,
        request: Request<v1::ReadRecordsRequest>,
    ) -> Result<Response<ReadStream>, Status> {
        let from = request.into_inner().from_sequence_number;
        if self.fault == Fault::OutOfRangeWhileRetained {
            *self.reads.lock().unwrap() += 1;
            return Err(Status::out_of_range("Error, decoded message length too large"));
        }
        let first_read = {
            let mut reads = self.reads.lock().unwrap();
            *reads += 1;
            *reads == 1
        };
        let skip = match self.fault {
            Fault::RecordsOutOfSequence => 5,
            Fault::RecordsOutOfSequenceOnce if first_read => 5,
            _ => 0,
        };
        let records: Vec<v1::Record> = (from + skip..END)
            .map(|seq| v1::Record {
                sequence_number: seq,
                append_time_unix_ms: 1,
                key: format!("k{seq}").into_bytes().into(),
                value: format!("v{seq}").into_bytes().into(),
            })
            .collect();
        let message = v1::ReadRecordsResponse {
            records,
            next_sequence_number: END.max(from),
            finished: self.fault == Fault::FinishedButCheckpointFails,
        };
        if from >= END {
            // nothing more: a long poll would wait; answer an empty message after a short wait
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(message)]))))
    }

    async fn checkpoint(
        &self,
        request: Request<v1::CheckpointRequest>,
    ) -> Result<Response<v1::CheckpointResponse>, Status> {
        if self.fault == Fault::FinishedButCheckpointFails {
            return Err(Status::unavailable("the checkpoint store is down"));
        }
        self.checkpoints
            .lock()
            .unwrap()
            .push(request.into_inner().sequence_number);
        Ok(Response::new(v1::CheckpointResponse {}))
    }

    async fn shutdown(
        &self,
        _: Request<v1::ShutdownRequest>,
    ) -> Result<Response<v1::ShutdownResponse>, Status> {
        Ok(Response::new(v1::ShutdownResponse {}))
    }

    async fn get_limits(
        &self,
        _: Request<v1::GetLimitsRequest>,
    ) -> Result<Response<v1::GetLimitsResponse>, Status> {
        Err(Status::unimplemented("faulty"))
    }

    async fn create_tunnel(
        &self,
        _: Request<v1::CreateTunnelRequest>,
    ) -> Result<Response<v1::CreateTunnelResponse>, Status> {
        Err(Status::unimplemented("faulty"))
    }
    async fn describe_tunnel(
        &self,
        _: Request<v1::DescribeTunnelRequest>,
    ) -> Result<Response<v1::DescribeTunnelResponse>, Status> {
        Err(Status::unimplemented("faulty"))
    }
    async fn list_tunnels(
        &self,
        _: Request<v1::ListTunnelsRequest>,
    ) -> Result<Response<v1::ListTunnelsResponse>, Status> {
        Err(Status::unimplemented("faulty"))
    }
    async fn delete_tunnel(
        &self,
        _: Request<v1::DeleteTunnelRequest>,
    ) -> Result<Response<v1::DeleteTunnelResponse>, Status> {
        Err(Status::unimplemented("faulty"))
    }
    async fn append(&self, _: Request<v1::AppendRequest>) -> Result<Response<v1::AppendResponse>, Status> {
        Err(Status::unimplemented("faulty"))
    }
    async fn seal_channel(
        &self,
        _: Request<v1::SealChannelRequest>,
    ) -> Result<Response<v1::SealChannelResponse>, Status> {
        Err(Status::unimplemented("faulty"))
    }
}

/// What a [`Faulty`] service saw.
#[derive(Clone, Default)]
struct Seen {
    reads: Arc<Mutex<u32>>,
    checkpoints: Arc<Mutex<Vec<u64>>>,
    reports: Arc<Mutex<Vec<(u32, v1::ChannelStatus, i64)>>>,
}

/// Serves a [`Faulty`] service on a free loopback port; returns its url and the checkpoints it was sent.
async fn serve_faulty(fault: Fault) -> (String, Arc<Mutex<Vec<u64>>>) {
    let (url, seen) = serve_faulty_seen(fault).await;
    (url, seen.checkpoints)
}

/// Serves a [`Faulty`] service on a free loopback port; returns its url and what it sees.
async fn serve_faulty_seen(fault: Fault) -> (String, Seen) {
    init_tracing();
    let seen = Seen::default();
    let service = Faulty {
        fault,
        reads: Arc::clone(&seen.reads),
        checkpoints: Arc::clone(&seen.checkpoints),
        reports: Arc::clone(&seen.reports),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TunnelServiceServer::new(service))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (url, seen)
}

/// Runs a worker against a faulty service; returns how it ended (it must end), and what it recorded.
async fn run_against(fault: Fault) -> (TunnelExit, Recorder, Vec<u64>) {
    let (url, checkpoints) = serve_faulty(fault).await;
    let (worker, recorder) = start_worker(
        &url,
        fast_options("t-faulty").retry_for(Duration::from_millis(500)),
        Registry::new(format!("{fault:?}")),
    )
    .await;
    let exit = tokio::time::timeout(LONG, worker.wait())
        .await
        .unwrap_or_else(|_| panic!("{fault:?}: the worker never stopped"));
    let checkpoints = checkpoints.lock().unwrap().clone();
    (exit, recorder, checkpoints)
}

fn malformed(exit: &TunnelExit) -> (&'static str, String) {
    match exit {
        TunnelExit::Fatal(err) => match &**err {
            TunnelError::Malformed { call, field, .. } => (*call, field.clone()),
            other => panic!("expected Malformed, got {other:?}"),
        },
        other => panic!("expected a fatal exit, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_session_answers_stop_the_worker_with_the_field_at_fault() {
    // a malformed first ConnectTunnel answer fails the start itself
    let (url, _) = serve_faulty(Fault::EmptyClientId).await;
    let started = TunnelWorker::builder(fast_options("t-faulty"))
        .connection(connection(&url).await)
        .run_subscriber(Recorder::default())
        .registry(Registry::new("empty-client-id"))
        .start()
        .await;
    match started {
        Err(TunnelError::Malformed { call, field, .. }) => {
            assert_eq!((call, field.as_str()), ("ConnectTunnel", "client_id"))
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
    let (exit, ..) = run_against(Fault::UnspecifiedStatus).await;
    assert_eq!(malformed(&exit), ("Heartbeat", "channels[0].status".into()));
    let (exit, ..) = run_against(Fault::ClosedButListed).await;
    assert_eq!(malformed(&exit), ("Heartbeat", "channels[0].status".into()));
    let (exit, recorder, _) = run_against(Fault::UnspecifiedChannelType).await;
    assert_eq!(malformed(&exit), ("GetCheckpoint", "channel_type".into()));
    assert_eq!(recorder.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_out_of_sequence_resync_from_the_checkpoint_and_stop_the_worker_if_they_persist() {
    // once: the channel resyncs (GetCheckpoint) and delivers every record in order
    let (url, checkpoints) = serve_faulty(Fault::RecordsOutOfSequenceOnce).await;
    let (worker, recorder) = start_worker(&url, fast_options("t-faulty"), Registry::new("once")).await;
    recorder.wait_for(END as usize).await;
    let seen: Vec<u64> = recorder.seen.lock().unwrap().iter().map(|s| s.sequence).collect();
    assert_eq!(seen, (0..END).collect::<Vec<u64>>());
    wait_until("checkpoint at the end", || {
        checkpoints.lock().unwrap().last() == Some(&END)
    })
    .await;
    worker.shutdown(Duration::from_secs(10)).await.unwrap();

    // always: after `retry_for` of resyncs the worker stops with the typed error, nothing delivered
    let (exit, recorder, checkpoints) = run_against(Fault::RecordsOutOfSequence).await;
    assert_eq!(
        malformed(&exit),
        ("ReadRecords", "records.sequence_number".into())
    );
    assert_eq!(recorder.count(), 0);
    assert!(checkpoints.iter().all(|&c| c == 0), "{checkpoints:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_channel_whose_last_checkpoint_failed_is_reported_close_not_terminated() {
    let (url, seen) = serve_faulty_seen(Fault::FinishedButCheckpointFails).await;
    // Checkpoints on a timer only, so the channel reaches its end with nothing checkpointed, then the final
    // checkpoint fails (retried for `retry_for`).
    let options = fast_options("t-faulty")
        .retry_for(Duration::from_millis(300))
        .checkpoint(arbor::tunnel::CheckpointPolicy::Every(Duration::from_secs(3600)));
    let (worker, recorder) = start_worker(&url, options, Registry::new("finished")).await;
    recorder.wait_for(END as usize).await;
    wait_until("the channel reported CLOSE", || {
        seen.reports
            .lock()
            .unwrap()
            .iter()
            .any(|&(c, status, _)| c == 0 && status == v1::ChannelStatus::Close)
    })
    .await;
    let reports = seen.reports.lock().unwrap().clone();
    assert!(
        !reports
            .iter()
            .any(|&(_, status, _)| status == v1::ChannelStatus::Terminated),
        "TERMINATED reported without its end checkpointed: {reports:?}"
    );
    assert!(
        reports
            .iter()
            .any(|&(c, status, version)| (c, status, version) == (0, v1::ChannelStatus::Close, 2)),
        "{reports:?}"
    );
    worker.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_range_read_at_a_retained_position_backs_off_and_stops_the_worker_after_retry_for() {
    let (url, seen) = serve_faulty_seen(Fault::OutOfRangeWhileRetained).await;
    let retry_for = Duration::from_millis(500);
    let (worker, recorder) = start_worker(
        &url,
        fast_options("t-faulty").retry_for(retry_for),
        Registry::new("out-of-range"),
    )
    .await;
    let exit = tokio::time::timeout(LONG, worker.wait())
        .await
        .expect("the worker never stopped: the read is retried forever");
    match exit {
        TunnelExit::Fatal(err) => match &*err {
            TunnelError::PersistentOutOfRange {
                channel_id: 0,
                position: 0,
                first_retained: 0,
                ..
            } => {}
            other => panic!("expected PersistentOutOfRange, got {other:?}"),
        },
        other => panic!("expected a fatal exit, got {other:?}"),
    }
    assert_eq!(recorder.count(), 0);
    // backed off (16 ms, x 2, ...): a handful of reads in half a second, not a spin
    let reads = *seen.reads.lock().unwrap();
    assert!((2..=50).contains(&reads), "{reads} reads within {retry_for:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_an_unknown_tunnel_fails_to_start_with_the_typed_error() {
    let server = TestServer::memory().await;
    let started = TunnelWorker::builder(fast_options("t-does-not-exist"))
        .connection(connection(&server.url).await)
        .run_subscriber(Recorder::default())
        .registry(Registry::new("unknown"))
        .start()
        .await;
    match started {
        Err(TunnelError::Call {
            call: "ConnectTunnel",
            kind: arbor::tunnel::ErrorKind::Fatal,
            status,
        }) => assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}"),
        other => panic!("expected ConnectTunnel's NOT_FOUND, got {other:?}"),
    }
    // the same under a supervisor: the start fails, nothing is left running
    let supervisor = DynamicSupervisor::start(DynamicSupervisorOptions::default())
        .await
        .unwrap();
    let under = TunnelWorker::builder(fast_options("t-does-not-exist"))
        .connection(connection(&server.url).await)
        .run_subscriber(Recorder::default())
        .registry(Registry::new("unknown-under"))
        .start_under(&supervisor)
        .await;
    assert!(
        matches!(
            under,
            Err(TunnelError::Call {
                call: "ConnectTunnel",
                ..
            })
        ),
        "{under:?}"
    );
    assert_eq!(supervisor.count_children().await.unwrap().active, 0);
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
    server.stop().await;
}

/// A source that panics in ReadRecords (a bug in a user's `TunnelSource`).
struct PanickingReads(arbor::tunnel::GrpcSource);

impl TunnelSource for PanickingReads {
    fn connect<'a>(
        &'a self,
        tunnel_id: &'a str,
        client_tag: &'a str,
        heartbeat_timeout: Duration,
    ) -> BoxFuture<'a, Result<Session, TunnelError>> {
        self.0.connect(tunnel_id, client_tag, heartbeat_timeout)
    }
    fn heartbeat<'a>(
        &'a self,
        session: &'a Session,
        channels: &'a [ReportedChannel],
    ) -> BoxFuture<'a, Result<Vec<ServerChannel>, TunnelError>> {
        self.0.heartbeat(session, channels)
    }
    fn get_checkpoint<'a>(
        &'a self,
        lease: &'a ChannelLease,
    ) -> BoxFuture<'a, Result<CheckpointInfo, TunnelError>> {
        self.0.get_checkpoint(lease)
    }
    fn read<'a>(
        &'a self,
        _: &'a ChannelLease,
        _: u64,
        _: u32,
        _: Duration,
    ) -> BoxFuture<'a, Result<ReadBatch, TunnelError>> {
        async move { panic!("the source's read panicked") }.boxed()
    }
    fn checkpoint<'a>(
        &'a self,
        lease: &'a ChannelLease,
        position: u64,
    ) -> BoxFuture<'a, Result<(), TunnelError>> {
        self.0.checkpoint(lease, position)
    }
    fn shutdown<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<(), TunnelError>> {
        self.0.shutdown(session)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_sources_read_stops_the_worker_with_its_own_typed_error() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "panics", 1).await;
    let options = fast_options(&tunnel).retry_for(Duration::from_millis(500));
    let source = PanickingReads(arbor::tunnel::GrpcSource::new(
        connection(&server.url).await,
        options.call_timeout,
    ));
    let worker = TunnelWorker::builder(options)
        .source(Arc::new(source))
        .run_subscriber(Recorder::default())
        .registry(Registry::new("panics"))
        .start()
        .await
        .unwrap();
    let exit = tokio::time::timeout(LONG, worker.wait())
        .await
        .expect("the worker never stopped");
    match exit {
        TunnelExit::Fatal(err) => match &*err {
            TunnelError::SourcePanicked {
                call: "ReadRecords",
                reason,
            } => {
                assert!(reason.contains("the source's read panicked"), "{reason}")
            }
            other => panic!("expected SourcePanicked, got {other:?}"),
        },
        other => panic!("expected a fatal exit, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_wider_than_the_services_limits_are_refused_or_lowered_at_start() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "limits", 1).await;
    // the service keeps clients for at most 1 h: a 2 h heartbeat timeout fails the start, naming both values
    let too_long = TunnelWorker::builder(
        fast_options(&tunnel).heartbeat(Duration::from_millis(100), Duration::from_secs(7200)),
    )
    .connection(connection(&server.url).await)
    .run_subscriber(Recorder::default())
    .registry(Registry::new("limits-refused"))
    .start()
    .await;
    match too_long {
        Err(TunnelError::InvalidOptions { field, reason }) => {
            assert_eq!(field, "heartbeat_timeout");
            assert!(reason.contains("2h") && reason.contains("1h"), "{reason}");
        }
        other => panic!("expected InvalidOptions, got {other:?}"),
    }
    // reads wider than the service's (10,000 records, 30 s) are lowered to them: records flow, no fatal error
    append_to(&mut client, &tunnel, Some(0), records("a", 20))
        .await
        .unwrap();
    let (worker, recorder) = start_worker(
        &server.url,
        fast_options(&tunnel)
            .read_batch_size(100_000)
            .read_wait(Duration::from_secs(60)),
        Registry::new("limits-lowered"),
    )
    .await;
    recorder.wait_for(20).await;
    append_to(&mut client, &tunnel, Some(0), records("b", 20))
        .await
        .unwrap();
    recorder.wait_for(40).await;
    assert!(worker.info().await.is_ok(), "the worker runs");
    worker.shutdown(Duration::from_secs(10)).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_while_the_service_is_down_starts_and_connects_once_it_is_back() {
    // a durable service with the tunnel, then down
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_string();
    let args = ["--data", data.as_str()];
    let mut service = ServeProcess::start(&args);
    let listen = service.url.trim_start_matches("http://").to_string();
    let tunnel = create_streams(&mut client(&service.url).await, "down", 1).await;
    service.sigkill();

    // a retryable first ConnectTunnel does not fail the start: the worker connects in the background
    let (worker, recorder) = start_worker(&service.url, fast_options(&tunnel), Registry::new("down")).await;
    assert_eq!(worker.info().await.unwrap().client_id, None);
    let service = ServeProcess::start_at(&listen, &args);
    append_to(
        &mut client(&service.url).await,
        &tunnel,
        Some(0),
        records("a", 10),
    )
    .await
    .unwrap();
    recorder.wait_for(10).await;
    assert!(worker.info().await.unwrap().client_id.is_some());
    worker.shutdown(Duration::from_secs(10)).await.unwrap();
    drop(service);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_onto_a_fatal_connect_stops_the_worker_without_failing_its_supervisor() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "restart-fatal", 1).await;
    let options = fast_options(&tunnel);
    let fail_connects = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let source = ServiceTimeout {
        inner: arbor::tunnel::GrpcSource::new(connection(&server.url).await, options.call_timeout),
        service_timeout: options.heartbeat_timeout,
        fail_heartbeats: Arc::default(),
        fail_connects: Arc::clone(&fail_connects),
    };
    let supervisor = DynamicSupervisor::start(DynamicSupervisorOptions::default())
        .await
        .unwrap();
    let worker = TunnelWorker::builder(options)
        .source(Arc::new(source))
        .run_subscriber(Recorder::default())
        .registry(Registry::new("restart-fatal"))
        .start_under(&supervisor)
        .await
        .unwrap();
    // a crash, and the restart's first ConnectTunnel is fatal (as for a tunnel deleted meanwhile)
    fail_connects.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut events = worker.events();
    worker.current().unwrap().kill();
    let fatal = next_event(&mut events, |e| match e {
        arbor::tunnel::TunnelEvent::Fatal { error } => Some(error.clone()),
        _ => None,
    })
    .await;
    assert!(fatal.contains("ConnectTunnel"), "{fatal}");
    let exit = tokio::time::timeout(LONG, worker.wait())
        .await
        .expect("the restarted worker never stopped");
    match exit {
        TunnelExit::Fatal(err) => assert!(
            matches!(
                &*err,
                TunnelError::Call {
                    call: "ConnectTunnel",
                    ..
                }
            ),
            "{err:?}"
        ),
        other => panic!("expected a fatal exit, got {other:?}"),
    }
    // the supervisor lives on, the worker stays down (a failed restart would have counted against the
    // supervisor's intensity and been retried)
    assert!(supervisor.is_running());
    assert_eq!(supervisor.count_children().await.unwrap().active, 0);
    supervisor.shutdown(Duration::from_secs(5)).await.unwrap();
    server.stop().await;
}
