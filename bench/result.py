"""What a benchmark run is asked to do (:class:`Params`) and what it measured
(:class:`Result`, with one :class:`InstanceResult` per gateway process and a
:class:`FrontResult` for Kamailio)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.stats import DirectionStats


@dataclass
class Params:
    calls: int = 200
    seconds: float = 20.0
    rate: float = 40.0  # new calls per second during the ramp
    warmup: float = 3.0  # seconds of media at least, after the ramp, before the window opens
    settle_max: float = 15.0  # and at most, waiting for the daemon to work off the ramp
    pin: bool = True
    profile: bool = False
    keep: bool = False
    setup_timeout: float = 15.0
    opus_complexity: int | None = None  # None: the gateway's default
    engine: str | None = None  # media.engine (auto, native, python); None: the default
    priority: str = "normal"  # of the daemon and the generator: normal, high, realtime
    log_level: str = "warning"  # the daemon's
    wait_quiet: float = 0.0  # wait up to this long for other work on the machine to calm down
    ref: str | None = None  # run the daemon from gateway/ at this git ref (default: working tree)
    daemon_gc: str = ""  # experiment: "threshold=A,B,C" for the daemon's collector
    meta_rtcp: bool = True  # Meta's side sends RTCP receiver reports every 5 s
    instances: int = 1  # gateway processes; more than one needs a front
    front: str = "direct"  # "direct": Meta's side connects to the daemon; "kamailio"
    compare: bool = False  # this run came after a one-instance baseline (python -m bench)
    generator_below: bool = True  # realtime, cores shared: generator below the instances
    # The impairment relay on the WhatsApp media leg (bench/impair.py, issue 11)
    relay: bool = False  # a relay even without an impairment (what it costs)
    loss: float = 0.0  # % random loss, Meta -> gateway
    burst: str = ""  # "NxMS": N bursts of MS ms inside the window
    jitter: float = 0.0  # ms, uniform
    jitter_reorder: bool = False  # jittered packets may overtake each other
    reorder: float = 0.0  # % held back behind the next packet
    duplicate: float = 0.0  # % sent twice
    impair_both: bool = False  # gateway -> Meta too
    impair_seed: int = 1
    # How the WhatsApp side keys SRTP (issue 14): "sdes" (a=crypto) or "dtls" (WebRTC
    # media: ICE-lite + DTLS-SRTP, bench/webrtc.py); the number's srtp in the config matches
    srtp: str = "sdes"


@dataclass
class InstanceResult:
    """One gateway process of a run (the only one, or one of several behind Kamailio)."""

    name: str
    core: int | None
    pid: int = 0
    calls: int = 0  # set up on this instance (the front's Call-ID hash chose it)
    cpu: float = 0.0  # seconds in the window
    utime: float = 0.0
    stime: float = 0.0
    wait: float = 0.0  # runnable but another task had its core
    slices: int = 0  # times it was put on its core in the window (wake-ups, preemptions)
    ramp_cpu: float = 0.0
    rss_idle_kib: int = 0
    rss_kib: int = 0
    window_seconds: float = 0.0
    exit: int | None = None
    m2p: DirectionStats = field(default_factory=lambda: DirectionStats("WhatsApp -> PBX"))
    p2m: DirectionStats = field(default_factory=lambda: DirectionStats("PBX -> WhatsApp"))

    @property
    def cpu_per_call_second(self) -> float:
        cs = self.calls * self.window_seconds
        return self.cpu / cs if cs else float("nan")

    @property
    def core_pct(self) -> float:
        return 100 * self.cpu / self.window_seconds if self.window_seconds else 0.0

    @property
    def wait_pct(self) -> float:
        return 100 * self.wait / self.window_seconds if self.window_seconds else 0.0


@dataclass
class FrontResult:
    """Kamailio's processes: CPU seconds per phase of the run."""

    processes: int = 0
    alive_at_end: int = 0
    ramp_cpu: float = 0.0  # the calls' set-up (INVITE, 407, INVITE, 200, ACK)
    cpu: float = 0.0  # the measurement window (media does not pass through it)
    wait: float = 0.0
    hangup_cpu: float = 0.0  # BYE and 200 of every call
    errors: list[str] = field(default_factory=list)


@dataclass
class Result:
    params: Params
    started: str = ""
    daemon_pid: int = 0
    pinned: bool = False
    calls_ok: int = 0
    calls_failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    setup_ms: list[float] = field(default_factory=list)
    setup_phases_ms: dict[str, list[float]] = field(default_factory=dict)
    # INVITE -> the first SRTP packet from the gateway decrypted (both modes), and the DTLS
    # handshake at the WhatsApp side (first ClientHello to keys; --srtp dtls)
    media_setup_ms: list[float] = field(default_factory=list)
    handshake_ms: list[float] = field(default_factory=list)
    no_first_media: int = 0  # calls up without any SRTP from the gateway by the window
    stun_answered: int = 0  # the gateway's ICE checks (incl. consent) answered, to the window's end
    stun_dropped: int = 0  # STUN not answered (bad credentials, integrity, no FINGERPRINT)
    pbx_invite_retransmissions: int = 0
    meta_reports_sent: int = 0  # SRTCP receiver reports from the WhatsApp side, whole run
    ramp_seconds: float = 0.0
    ramp_daemon_cpu: float = 0.0
    backlog_after_ramp_ms: float = 0.0
    settle_seconds: float = 0.0
    window_seconds: float = 0.0
    daemon_cpu: float = 0.0  # seconds in the window
    daemon_utime: float = 0.0
    daemon_wait: float = 0.0  # seconds runnable but not running: the CPU was someone else's
    daemon_stime: float = 0.0
    daemon_rss_idle_kib: int = 0
    daemon_rss_kib: int = 0
    generator_cpu: float = 0.0
    core_use: dict[int, dict[str, float]] = field(default_factory=dict)  # fraction per column
    udp_drops: dict[str, int] = field(default_factory=dict)  # system-wide counters
    socket_drops: int = 0  # on the benchmark's own sockets (daemon media, generator)
    m2p: DirectionStats = field(default_factory=lambda: DirectionStats("WhatsApp -> PBX"))
    p2m: DirectionStats = field(default_factory=lambda: DirectionStats("PBX -> WhatsApp"))
    drain_seconds: float = 0.0  # from the last send to the last forwarded audio packet
    pacer_late_p99_ms: float = 0.0
    pacer_late_max_ms: float = 0.0
    audio: dict[str, str] = field(default_factory=dict)
    byes_ok: int = 0
    byes_failed: int = 0
    pbx_byes: int = 0
    gateway_byes: int = 0
    daemon_exit: int | None = None
    gc_pauses: list[tuple[float, int]] = field(default_factory=list)  # in the window: (s, gen)
    daemon_errors: list[str] = field(default_factory=list)
    profile: list[tuple[str, float, float]] = field(default_factory=list)  # fn, self%, total%
    profile_total: list[tuple[str, float, float]] = field(default_factory=list)
    profile_note: str = ""
    notes: list[str] = field(default_factory=list)
    code: str = ""  # what the daemon ran: commit, and whether the working tree differed
    engine: str = ""  # the media engine the daemon runs (wagw_build_info), "" if unread
    # each gateway process; the daemon_* figures above are their sums (one: the same)
    instances: list[InstanceResult] = field(default_factory=list)
    front: FrontResult | None = None
    placement: str = ""
    generator_wait: float = 0.0  # the generator runnable but without a core, in the window
    generator_rt: int = 0  # its SCHED_FIFO level under --priority realtime
    relay_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # per direction

    @property
    def call_seconds(self) -> float:
        return self.calls_ok * self.window_seconds

    @property
    def cpu_per_call_second(self) -> float:
        return self.daemon_cpu / self.call_seconds if self.call_seconds else float("nan")

    @property
    def daemon_core_pct(self) -> float:
        return 100 * self.daemon_cpu / self.window_seconds if self.window_seconds else 0.0

    @property
    def others_on_daemon_core_pct(self) -> float:
        """Busy time of the (first) daemon's core not spent in it or in interrupts: others."""
        first = self.instances[0] if self.instances else None
        use = self.core_use.get(first.core) if first and first.core is not None else None
        if not use or not self.pinned or first is None:
            return 0.0
        busy = sum(v for k, v in use.items() if k not in ("idle", "iowait", "irq", "softirq"))
        return max(0.0, 100 * busy - first.core_pct)

    @property
    def daemon_wait_pct(self) -> float:
        """Share of the window the daemon was ready to run but another task had its core."""
        return 100 * self.daemon_wait / self.window_seconds if self.window_seconds else 0.0

    @property
    def generator_core_pct(self) -> float:
        return 100 * self.generator_cpu / self.window_seconds if self.window_seconds else 0.0

    @property
    def generator_wait_pct(self) -> float:
        return 100 * self.generator_wait / self.window_seconds if self.window_seconds else 0.0

    def sum_instances(self) -> None:
        """The daemon_* figures as the sums over the instances."""
        inst = self.instances
        self.daemon_pid = inst[0].pid if inst else 0
        self.daemon_cpu = sum(i.cpu for i in inst)
        self.daemon_utime = sum(i.utime for i in inst)
        self.daemon_stime = sum(i.stime for i in inst)
        self.daemon_wait = sum(i.wait for i in inst)
        self.ramp_daemon_cpu = sum(i.ramp_cpu for i in inst)
        self.daemon_rss_idle_kib = sum(i.rss_idle_kib for i in inst)
        self.daemon_rss_kib = sum(i.rss_kib for i in inst)
        exits = [i.exit for i in inst]
        self.daemon_exit = next((e for e in exits if e), exits[0] if exits else None)
