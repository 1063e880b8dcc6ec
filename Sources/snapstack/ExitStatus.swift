import ArgumentParser
import Snapstack
import SnapstackErrors

/// snapstack's exit codes. They are part of the interface: scripts rely on them, so a code's
/// meaning never changes and new meanings get new numbers. Documented in README.md.
enum ExitStatus: Int32, CaseIterable {
    /// Success.
    case ok = 0
    /// The operation failed; the message says what, why and what to do.
    case failed = 1
    /// The kernel cannot run snapstack: no device-mapper driver, or a target is missing.
    case kernelUnsupported = 3
    /// `doctor`: the kernel is fine, but udev or the state directory is not.
    case environmentIncomplete = 4
    /// The device, snapshot or file named does not exist.
    case notFound = 5
    /// Refused because of the system's state: mounted, open, busy, too small, already
    /// protected, snapshots present, a store on a device of the set.
    case refused = 6
    /// Another snapstack process held a lock: the state's longer than `--lock-timeout`, or an image's writer lock.
    case locked = 7
    /// The state database cannot be read (corrupt, or written by a newer snapstack).
    case stateUnreadable = 8
    /// An image is incomplete, or its bytes do not match its checksums (`verify`, `restore`,
    /// `apply`); the message names the first bad block.
    case verificationFailed = 9
    /// An incremental export was refused: the device's change tracking was interrupted since
    /// its base (a foreign reload of an adopted device, a stack rebuilt after a reboot), so it
    /// would miss writes. `--allow-full` reads every block instead; the message says when and why.
    case trackingInterrupted = 10
    /// Bad arguments or options (ArgumentParser's `validationFailure`, sysexits' EX_USAGE).
    case usage = 64

    var exitCode: ExitCode { ExitCode(rawValue) }

    init(_ kind: SnapstackError.Kind) {
        switch kind {
        case .failed: self = .failed
        case .kernelUnsupported: self = .kernelUnsupported
        case .notFound: self = .notFound
        case .refused: self = .refused
        case .invalidArgument: self = .usage
        case .locked: self = .locked
        case .stateUnreadable: self = .stateUnreadable
        case .verificationFailed: self = .verificationFailed
        case .trackingInterrupted: self = .trackingInterrupted
        }
    }
}
