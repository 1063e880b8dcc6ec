import BlockIO
import DeviceMapper
import Foundation
import Logging
import ServiceLifecycle
import Snapstack
import SnapstackErrors
import SystemPackage

/// How the store watch keeps snapshot stores from filling up.
public struct StoreWatchSettings: Sendable, Equatable {
    /// Grow file stores when they pass `threshold`. False: watch only — a snapshot whose store
    /// fills up is still dropped and recorded, so that a dead snapshot does not linger.
    public var enabled: Bool
    /// The share of a store in use (0...1, as `lvs` shows `Data%`) past which it is grown.
    public var threshold: Double
    /// How much a store grows each time; nil doubles it.
    public var step: Bytes?
    /// The size no store is grown beyond; nil: as large as its origin can fill (the origin's
    /// size plus the store's metadata), past which a larger store buys nothing.
    public var limit: Bytes?
    /// How often the stores' use is read when nothing else wakes the watch. The kernel raises
    /// no event as a store fills (only when it invalidates a snapshot), so use is polled, as
    /// LVM's dmeventd snapshot plugin does (every 10 s); the watch looks sooner when a store
    /// fills fast enough to reach the threshold before the next look.
    public var pollInterval: Duration

    public init(enabled: Bool = true, threshold: Double = 0.8, step: Bytes? = nil, limit: Bytes? = nil,
                pollInterval: Duration = .seconds(5)) {
        self.enabled = enabled
        self.threshold = threshold
        self.step = step
        self.limit = limit
        self.pollInterval = pollInterval
    }
}

/// Follows the stores of live snapshots: grows a file store past `threshold` by `step` up to
/// `limit` (`Orchestrator.extend`), and drops a snapshot the kernel invalidated
/// (`Orchestrator.dropOverflowed`), recording an event for each. At the same looks it lets
/// writes bypass an era layer whose metadata failed (`bypassFailedTracking`).
///
/// It wakes on device-mapper events (a snapshot invalidated, a device created or removed: one
/// `poll(2)` on `/dev/mapper/control`, see `DeviceMapperEvents`) and otherwise reads the
/// stores' use every `pollInterval`, sooner while one fills fast. It runs on a thread of its
/// own, so that its blocking waits never hold a thread of the concurrency pool. Each look
/// takes the state lock shared, and a change takes it exclusively, only for that change: the
/// command line keeps working beside it. A snapshot device that vanished reads as missing and
/// is left to `reconcile`. On task cancellation or graceful shutdown, `run` returns once the
/// step in progress (if any) is done.
public struct StoreWatchService: Service {
    let stateDirectory: FilePath
    let settings: StoreWatchSettings
    let logger: Logger
    /// Called after the watch grew or dropped something: the metrics follow.
    let onChange: @Sendable () -> Void

    /// How long a look waits for a command holding the state lock before trying later.
    static let readLockTimeout: Double = 1
    /// How long a growth or a drop waits for it: they matter more than a look.
    static let changeLockTimeout: Double = 10

    public init(stateDirectory: FilePath, settings: StoreWatchSettings = StoreWatchSettings(),
                logger: Logger = Logger(label: "snapstack.store-watch"), onChange: @escaping @Sendable () -> Void = {}) {
        self.onChange = onChange
        self.stateDirectory = stateDirectory
        self.settings = settings
        self.logger = logger
    }

    public func run() async throws {
        let events = try DeviceMapperEvents()
        if !events.pollable {
            logger.notice("this device-mapper driver cannot be polled for events: stores are only read every \(settings.pollInterval)")
        }
        try await withTaskCancellationOrGracefulShutdownHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let thread = Thread {
                    do {
                        try watch(events)
                        continuation.resume()
                    } catch {
                        continuation.resume(throwing: error)
                    }
                }
                thread.name = "snapstack-store-watch"
                thread.start()
            }
        } onCancelOrGracefulShutdown: {
            events.cancel()
        }
    }

    /// The loop: arm, look (and act), wait for an event, a timeout or the end.
    func watch(_ events: DeviceMapperEvents) throws {
        var planner = StoreWatchPlanner(settings: settings)
        let clock = ContinuousClock()
        let start = clock.now
        logger.info("store watch started", metadata: [
            "state": "\(stateDirectory)", "growth": "\(settings.enabled)", "threshold": "\(settings.threshold)",
            "step": "\(settings.step.map { "\($0.rawValue)" } ?? "double")",
            "limit": "\(settings.limit.map { "\($0.rawValue)" } ?? "origin")", "interval": "\(settings.pollInterval)",
        ])
        watching: while !events.isCancelled {
            do {
                // Before the look: an event raised during it wakes the wait at once.
                try events.arm()
            } catch {
                logger.error("cannot watch for device-mapper events: \(error)")
            }
            let looked = clock.now
            let wait = look(&planner, at: looked - start)
            switch try events.wait(timeout: wait) {
            case .cancelled: break watching
            case .timeout: continue
            case .event:
                // Events come in bursts (a drop is a removal and a table swap, and other dm users
                // raise theirs): look at most every `minimumWait`. Disarmed, the wait only sleeps.
                let since = clock.now - looked
                if since < StoreWatchPlanner.minimumWait,
                   try events.wait(timeout: StoreWatchPlanner.minimumWait - since) == .cancelled { break watching }
            }
        }
        logger.info("store watch stopped")
    }

    /// One look at every store, and what it calls for. Returns how long to wait for the next.
    func look(_ planner: inout StoreWatchPlanner, at now: Duration) -> Duration {
        // Nothing recorded yet: nothing to watch, and no state directory to create.
        guard Orchestrator.hasState(in: stateDirectory) else {
            return settings.pollInterval
        }
        let stores: [StoreUsage]
        let failedTracking: [String]
        do {
            let orchestrator = try Orchestrator(stateDirectory: stateDirectory, lockTimeout: Self.readLockTimeout, mode: .shared)
            stores = try orchestrator.storeUsage()
            failedTracking = try orchestrator.devicesWithFailedTracking()
        } catch let error as SnapstackError where error.kind == .locked {
            logger.debug("state busy; looking again shortly", metadata: ["holder": "\(error.why ?? "")"])
            return min(settings.pollInterval, .seconds(1))
        } catch {
            logger.error("cannot read the snapshot stores: \(error)")
            return settings.pollInterval
        }
        let (actions, wait) = planner.plan(stores, at: now)
        guard !actions.isEmpty || !failedTracking.isEmpty else { return wait }
        let orchestrator: Orchestrator
        do {
            orchestrator = try Orchestrator(stateDirectory: stateDirectory, lockTimeout: Self.changeLockTimeout, mode: .exclusive)
        } catch {
            logger.warning("cannot take the state lock to act on the stores; trying again: \(error)")
            return min(wait, .seconds(1))
        }
        if !failedTracking.isEmpty { bypassFailedTracking(orchestrator) }
        for action in actions { perform(action, orchestrator, &planner) }
        onChange()
        return wait
    }

    /// An era layer whose metadata failed fails its origin's writes: each look swaps such
    /// layers out (`Orchestrator.bypassFailedTracking`), so writes fail for at most a poll
    /// interval. dm-era raises no event for it; its status reads `Error`.
    func bypassFailedTracking(_ orchestrator: Orchestrator) {
        do {
            for bypassed in try orchestrator.bypassFailedTracking() {
                logger.error("change tracking bypassed: the device's writes go straight to its disk; the next incremental is refused",
                             metadata: ["device": "\(bypassed.name)", "why": "\(bypassed.why)"])
            }
        } catch {
            logger.error("cannot bypass a failed change tracking: \(error)")
        }
    }

    func perform(_ action: StoreWatchPlanner.Action, _ orchestrator: Orchestrator, _ planner: inout StoreWatchPlanner) {
        switch action {
        case .grow(let snapshot, let size, let used):
            let percent = String(format: "%.1f%%", used * 100)
            let started = ContinuousClock.now
            do {
                let result = try orchestrator.extend(
                    snapshot: snapshot, .to(size),
                    reason: "by the store watch at \(percent) used (threshold \(String(format: "%.0f%%", settings.threshold * 100)))")
                planner.succeeded(snapshot)
                logger.info("grew a snapshot store", metadata: [
                    "snapshot": "\(snapshot)", "from": "\(result.previousSize.rawValue)", "to": "\(result.size.rawValue)",
                    "used": "\(percent)", "took": "\(ContinuousClock.now - started)",
                ])
            } catch let error as SnapstackError where error.kind == .notFound || error.kind == .invalidArgument {
                // Dropped, or grown by a command, since the look.
                logger.debug("store changed before it could grow: \(error)", metadata: ["snapshot": "\(snapshot)"])
            } catch {
                failed(planner: &planner, snapshot, "cannot grow its store to \(size.rawValue) bytes: \(error)", orchestrator)
            }
        case .drop(let snapshot, let detail):
            do {
                let result = try orchestrator.dropOverflowed(snapshot: snapshot, detail: detail)
                planner.succeeded(snapshot)
                if result.dropped {
                    logger.warning("dropped an invalidated snapshot", metadata: ["snapshot": "\(snapshot)", "why": "\(result.reason)"])
                } else {
                    logger.warning("an invalidated snapshot is open; it is dropped once closed", metadata: ["snapshot": "\(snapshot)"])
                }
            } catch let error as SnapstackError where error.kind == .notFound {
                logger.debug("snapshot gone before it could be dropped", metadata: ["snapshot": "\(snapshot)"])
            } catch {
                failed(planner: &planner, snapshot, "cannot drop the invalidated snapshot: \(error)", orchestrator)
            }
        case .warn(let snapshot, let message):
            logger.warning("\(message)", metadata: ["snapshot": "\(snapshot)"])
            orchestrator.record(event: StoreEvent.storeLimit, subject: snapshot, message: message)
        }
    }

    /// Logs a failure every time, and records it as an event once until something changes.
    private func failed(planner: inout StoreWatchPlanner, _ snapshot: String, _ message: String, _ orchestrator: Orchestrator) {
        logger.error("\(message)", metadata: ["snapshot": "\(snapshot)"])
        if planner.failed(snapshot, message) {
            orchestrator.record(event: StoreEvent.storeWatch, subject: snapshot, message: message)
        }
    }
}

/// The watch's decisions, apart from the kernel and the database so that they can be tested:
/// which stores to grow and to what size, which snapshots to drop or warn about, and how soon
/// to look again.
struct StoreWatchPlanner {
    enum Action: Equatable {
        /// Grow the store of `snapshot` (`NAME-SNAP`) to `to`; `used` is its share in use now.
        case grow(snapshot: String, to: Bytes, used: Double)
        /// The kernel invalidated the snapshot.
        case drop(snapshot: String, detail: String)
        /// Past the threshold and unable to grow: it may overflow.
        case warn(snapshot: String, message: String)
    }

    /// The soonest the watch looks again, however fast a store fills.
    static let minimumWait: Duration = .milliseconds(200)

    let settings: StoreWatchSettings
    private var samples: [String: (at: Duration, allocated: UInt64, rate: Double)] = [:]
    /// The store size at which the limit warning was given, so that it is given once per size.
    private var warned: [String: Bytes] = [:]
    /// The last failure recorded as an event, by snapshot.
    private var failures: [String: String] = [:]

    init(settings: StoreWatchSettings) {
        self.settings = settings
    }

    private var threshold: Double { min(max(settings.threshold, 0.01), 1) }

    mutating func plan(_ stores: [StoreUsage], at now: Duration) -> (actions: [Action], wait: Duration) {
        var actions: [Action] = []
        var wait = settings.pollInterval
        // What is remembered of a snapshot goes with it: a daemon that runs for years sees
        // thousands of snapshots come and go.
        let live = Set(stores.map(\.snapshotID)), liveNames = Set(stores.map(\.name))
        samples = samples.filter { live.contains($0.key) }
        warned = warned.filter { live.contains($0.key) }
        failures = failures.filter { liveNames.contains($0.key) }
        for store in stores {
            let allocated: Bytes, total: Bytes
            switch store.condition {
            case .invalid:
                actions.append(.drop(snapshot: store.name, detail: "seen by the store watch"))
                continue
            case .overflow:
                actions.append(.drop(snapshot: store.name, detail: "seen by the store watch"))
                continue
            case .missing, .unknown:
                // An open invalid snapshot marked earlier: try again now that it may be closed.
                if store.markedInvalid { actions.append(.drop(snapshot: store.name, detail: "marked invalid earlier")) }
                continue
            case .active(let used, let size, _):
                (allocated, total) = (used, size)
            }
            guard total > .zero else { continue }

            // The fill rate, from the last look at the same snapshot.
            var rate = 0.0
            if let last = samples[store.snapshotID], now > last.at {
                let seconds = Self.seconds(now - last.at)
                rate = allocated.rawValue >= last.allocated
                    ? Double(allocated.rawValue - last.allocated) / seconds : 0
                if rate == 0 { rate = last.rate / 2 }   // a pause: remember it filled, fading
            }
            samples[store.snapshotID] = (now, allocated.rawValue, rate)

            let used = Double(allocated.rawValue) / Double(total.rawValue)
            let largest = store.largestUsefulSize
            let cap = min(settings.limit ?? largest, largest)
            let growable = settings.enabled && store.storeIsGrowable && cap > total
            let thresholdBytes = threshold * Double(total.rawValue)
            let secondsToThreshold = rate > 0 ? (thresholdBytes - Double(allocated.rawValue)) / rate : .infinity
            // Past the threshold — or so close at this rate that waiting would overshoot it.
            let due = used >= threshold || (growable && secondsToThreshold < 2 * Self.seconds(Self.minimumWait))
            if due && growable {
                actions.append(.grow(snapshot: store.name, to: growthTarget(allocated: allocated, total: total, rate: rate, cap: cap),
                                     used: used))
                warned[store.snapshotID] = nil
            } else if due && used >= threshold {
                if warned[store.snapshotID] != total {
                    warned[store.snapshotID] = total
                    actions.append(.warn(snapshot: store.name, message: warning(store, used: used, cap: cap)))
                }
            } else if growable && rate > 0 {
                // Look again halfway to the threshold at this rate.
                wait = min(wait, max(Self.minimumWait, Self.duration(secondsToThreshold / 2)))
            }
        }
        return (actions, wait)
    }

    /// `step` more, or double; at least enough that the store is back under the threshold
    /// after a poll interval's writes at the current rate; at most `cap`.
    func growthTarget(allocated: Bytes, total: Bytes, rate: Double, cap: Bytes) -> Bytes {
        // Saturating: a `grow-by` near 2^64 (the policy accepts any size) or a huge store must
        // end at `cap`, not trap the daemon into a restart loop.
        let (grown, overflow) = total.rawValue.addingReportingOverflow(settings.step?.rawValue ?? total.rawValue)
        var target = Bytes(overflow ? .max : grown)
        let needed = (Double(allocated.rawValue) + rate * Self.seconds(settings.pollInterval)) / threshold
        if needed.isFinite, needed > Double(target.rawValue) {
            // 2^64 is the first Double that no UInt64 holds.
            target = needed >= 0x1p64 ? Bytes(.max) : Bytes(UInt64(needed.rounded(.up)))
        }
        return min(target, cap)
    }

    private func warning(_ store: StoreUsage, used: Double, cap: Bytes) -> String {
        let head = String(format: "%.1f%% of its store (%llu bytes) is in use, past the threshold of %.0f%%",
                          used * 100, store.storeSize.rawValue, threshold * 100)
        let why: String
        if !store.storeIsGrowable {
            why = "its store is the block device \(store.storePath), which snapstack does not grow: grow it (e.g. lvextend)"
        } else if !settings.enabled {
            why = "store growth is off"
        } else {
            why = "the store is at its limit (\(cap.rawValue) bytes)"
        }
        return "\(head); \(why), or it may overflow, and is then dropped"
    }

    /// Snapshots the planner remembers something of (samples, warnings, failures).
    var rememberedSnapshots: Int { samples.count + warned.count + failures.count }

    /// Forgets the failures of a snapshot that was handled.
    mutating func succeeded(_ snapshot: String) {
        failures[snapshot] = nil
    }

    /// Notes a failure; true when it differs from the last one of the same snapshot.
    mutating func failed(_ snapshot: String, _ message: String) -> Bool {
        defer { failures[snapshot] = message }
        return failures[snapshot] != message
    }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }

    static func duration(_ seconds: Double) -> Duration {
        seconds.isFinite ? .nanoseconds(Int64(min(seconds, 1e9) * 1e9)) : .seconds(1_000_000_000)
    }
}
