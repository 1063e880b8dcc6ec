import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Waits for device-mapper events on any device — a snapshot the kernel invalidates, a table
/// swapped in, a device created or removed — with a timeout, and cancellably from another
/// thread.
///
/// The kernel counts these events globally (`dm_issue_global_event`, raised by
/// `dm_table_event`, by every table swap and by create/remove/rename), and `/dev/mapper/control`
/// is pollable since driver 4.37 (kernel 4.14): `poll(2)` reports it readable once the
/// counter has moved past the number the descriptor remembers. `open(2)` stores the current
/// number (`dm_open`), so a descriptor opened before reading the devices' status wakes for any
/// event raised after that read: opening is the arming, and no event is lost between a check
/// and the wait that follows it. This is one descriptor for all devices, where libdm's
/// `DM_DEVICE_WAITEVENT` blocks a thread per device in an ioctl that only a signal interrupts.
///
/// On an older driver, `wait` only sleeps for its timeout (`pollable` is false).
public final class DeviceMapperEvents: Sendable {
    public enum Outcome: Sendable, Equatable {
        /// An event was raised since `arm`.
        case event
        /// The timeout passed without one.
        case timeout
        /// `cancel` was called (now or earlier).
        case cancelled
    }

    /// Whether the driver reports events through `poll(2)` on its control node.
    public let pollable: Bool
    private let armed = Mutex<FileDescriptor?>(nil)
    private let cancelled = Atomic<Bool>(false)
    private let wakeRead: FileDescriptor
    private let wakeWrite: FileDescriptor

    /// Reads the driver's version (`DM_VERSION`) and makes the pipe that `cancel` writes to.
    public init() throws {
        let version = try DeviceMapperClient().driverVersion()
        let parts = version.split(separator: ".").compactMap { Int($0) }
        pollable = parts.count >= 2 && (parts[0] > 4 || (parts[0] == 4 && parts[1] >= 37))
        do {
            (wakeRead, wakeWrite) = try FileDescriptor.pipe()
        } catch {
            throw DeviceMapperError(kind: .failed, operation: "pipe", errno: error as? Errno)
        }
        for descriptor in [wakeRead, wakeWrite] {
            _ = fcntl(descriptor.rawValue, F_SETFD, FD_CLOEXEC)
        }
        // cancel() must never block, whoever calls it and however often.
        _ = fcntl(wakeWrite.rawValue, F_SETFL, O_NONBLOCK)
    }

    deinit {
        try? armed.withLock { $0 }?.close()
        try? wakeRead.close()
        try? wakeWrite.close()
    }

    /// Opens a new descriptor on `/dev/mapper/control`: from now on, any event makes the next
    /// `wait` return `.event`. Call it before reading what the event would change.
    public func arm() throws {
        guard pollable else { return }
        let descriptor: FileDescriptor
        do {
            descriptor = try FileDescriptor.open("/dev/mapper/control", .readWrite, options: [.closeOnExec])
        } catch {
            throw DeviceMapperError(kind: .driverUnavailable, operation: "open /dev/mapper/control", errno: error as? Errno)
        }
        let previous = armed.withLock { current -> FileDescriptor? in
            defer { current = descriptor }
            return current
        }
        try? previous?.close()
    }

    /// Waits until an event was raised since `arm`, `timeout` passed, or `cancel` was called.
    /// An event disarms: `arm` again before the next wait that should see one.
    public func wait(timeout: Duration) throws -> Outcome {
        if cancelled.load(ordering: .acquiring) { return .cancelled }
        let control = armed.withLock { $0 }
        var descriptors = [pollfd(fd: wakeRead.rawValue, events: Int16(POLLIN), revents: 0)]
        if let control { descriptors.append(pollfd(fd: control.rawValue, events: Int16(POLLIN), revents: 0)) }
        let deadline = ContinuousClock.now + timeout
        while true {
            let left = deadline - ContinuousClock.now
            let milliseconds = max(0, Int32(clamping: left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000))
            let count = poll(&descriptors, nfds_t(descriptors.count), left <= .zero ? 0 : max(milliseconds, 1))
            if count < 0 {
                let code = Errno(rawValue: errno)
                if code == .interrupted { continue }
                throw DeviceMapperError(kind: .failed, operation: "poll /dev/mapper/control", errno: code)
            }
            if descriptors[0].revents != 0 || cancelled.load(ordering: .acquiring) { return .cancelled }
            if count == 0 { return .timeout }
            // POLLIN, or an error condition on the control descriptor: either way the caller
            // should look again, with a fresh descriptor.
            let consumed = armed.withLock { current -> FileDescriptor? in
                defer { current = nil }
                return current
            }
            try? consumed?.close()
            return .event
        }
    }

    /// Whether `cancel` was called.
    public var isCancelled: Bool { cancelled.load(ordering: .acquiring) }

    /// Makes the current and every later `wait` return `.cancelled`. Safe from any thread,
    /// including a task-cancellation handler.
    public func cancel() {
        cancelled.store(true, ordering: .releasing)
        var byte: UInt8 = 1
        _ = write(wakeWrite.rawValue, &byte, 1)
    }
}
