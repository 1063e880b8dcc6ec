import Foundation
import Logging
import ServiceLifecycle
import Snapstack
import SnapstackErrors
import Synchronization
import SystemPackage

/// Marks the metrics out of date: the daemon's operations call `changed()` when they are done.
final class MetricsTrigger: Sendable {
    private let dirty = Atomic<Bool>(true)

    func changed() { dirty.store(true, ordering: .releasing) }

    /// Whether something changed since the last call.
    func take() -> Bool { dirty.exchange(false, ordering: .acquiringAndReleasing) }
}

/// Writes the metrics file for node_exporter's textfile collector: at start, after every
/// operation of the daemon (hotplug, reconcile, the store watch's growths and drops), and every
/// `interval` besides, so that the store use and the written-at timestamp stay current. The
/// write runs on the worker, between operations, and takes the state lock shared for a short
/// while only: a command holding the lock delays the file, never the daemon's work.
struct MetricsService: Service {
    let file: FilePath
    let interval: Duration
    let stateDirectory: FilePath
    let worker: Worker
    let trigger: MetricsTrigger
    let logger: Logger

    /// How long one write waits for a command holding the state lock before trying later.
    static let lockTimeout: Double = 2
    /// How often the trigger is looked at: the delay between an operation and its metrics.
    static let tick: Duration = .milliseconds(200)

    func run() async throws {
        logger.info("writing metrics", metadata: ["file": "\(file)", "interval": "\(interval)"])
        let clock = ContinuousClock()
        var last: ContinuousClock.Instant?
        var failing = false
        var retryAfter = clock.now
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            let due = last.map { clock.now - $0 >= interval } ?? true
            if (trigger.take() || due) && clock.now >= retryAfter {
                let file = self.file, state = stateDirectory
                do {
                    try await worker.perform {
                        let now = Date()
                        let text: String
                        if Orchestrator.hasState(in: state) {
                            text = try Orchestrator(stateDirectory: state, lockTimeout: Self.lockTimeout, mode: .shared).metricsText(now: now)
                        } else {
                            // Nothing protected yet: say so, without creating the state.
                            text = try SnapstackMetrics.render(MetricsInput(devices: [], snapshots: [], exports: [], overflows: 0,
                                                                            trackingInterruptions: 0, readAt: now))
                        }
                        try SnapstackMetrics.write(text, to: file)
                    }
                    last = clock.now
                    if failing { logger.notice("metrics written again", metadata: ["file": "\(file)"]) }
                    failing = false
                } catch let error as SnapstackError where error.kind == .locked {
                    logger.debug("state busy; metrics written shortly", metadata: ["holder": "\(error.why ?? "")"])
                    trigger.changed()
                    retryAfter = clock.now + .seconds(5)
                } catch {
                    // Said once, not every interval; the file's timestamp tells the rest.
                    if !failing { logger.error("cannot write the metrics: \(error)", metadata: ["file": "\(file)"]) }
                    failing = true
                    last = clock.now
                }
            }
            try? await Task.sleep(for: Self.tick)
        }
    }
}
