import CopyEngine
import Dispatch
import Foundation
import Synchronization

/// SIGINT, SIGTERM and SIGHUP (Ctrl-C, `kill`, an SSH session that hangs up) no longer end the
/// process once this exists: they are ignored as signals and delivered as a flag instead. A
/// copy stops between two I/Os (the image is left marked incomplete rather than half-written
/// without a word); an operation that changes devices finishes or rolls back first.
final class Interruption: @unchecked Sendable {
    static let signals = [SIGINT, SIGTERM, SIGHUP]
    let flag = CancellationFlag()
    private let signal = Atomic<Int32>(0)
    private var sources: [any DispatchSourceSignal] = []

    init() {
        for number in Self.signals {
            Foundation.signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            // Holds this object for as long as the process lives, as the sources do.
            source.setEventHandler { [self] in
                signal.store(number, ordering: .relaxed)
                flag.cancel()
            }
            source.resume()
            sources.append(source)
        }
    }

    /// The name of the last signal that came, if any did.
    var received: String? {
        switch signal.load(ordering: .relaxed) {
        case 0: nil
        case SIGINT: "SIGINT"
        case SIGTERM: "SIGTERM"
        case SIGHUP: "SIGHUP"
        case let other: "signal \(other)"
        }
    }
}

/// Runs a command that changes devices (protect, snapshot, drop, merge, extend, reconcile...)
/// to its end. Killed half-way, it would leave devices suspended — every filesystem on them
/// frozen, every writer hung — or half-built until someone runs `reconcile`; it takes seconds,
/// so a signal waits for it, and is reported after. SIGKILL cannot wait: `reconcile` (which
/// the daemon runs at start) repairs what it leaves.
func changingDevices(_ body: (Interruption) throws -> Void) throws {
    let interruption = Interruption()
    defer {
        if let signal = interruption.received {
            Output.error("snapstack: \(signal) came while devices were being changed; the operation was taken to its end first, so that nothing is left suspended or half-built")
        }
    }
    try running { try body(interruption) }
}
