import BlockIO
import CUdev
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// One event udev has finished processing (its rules have run, its links exist), with the
/// device's properties as udev's database has them after the event.
public struct UdevEvent: Sendable {
    public enum Action: Sendable, Equatable {
        case add, remove, change, move, online, offline, bind, unbind
        case other(String)

        init(_ text: String) {
            switch text {
            case "add": self = .add
            case "remove": self = .remove
            case "change": self = .change
            case "move": self = .move
            case "online": self = .online
            case "offline": self = .offline
            case "bind": self = .bind
            case "unbind": self = .unbind
            default: self = .other(text)
            }
        }
    }

    public var action: Action
    public var device: UdevDevice
    /// The kernel's uevent sequence number (`SEQNUM`).
    public var sequenceNumber: UInt64
}

/// The events udev has processed for one subsystem, as an `AsyncSequence` for one consumer.
///
/// The netlink socket (`udev_monitor_new_from_netlink(udev, "udev")`) is bound when the
/// monitor is made, so every event from then on is kept, also while the consumer is busy
/// elsewhere (the daemon starts it before its boot-time reconcile). A dedicated thread owns the
/// libudev handles: it polls the socket and a wake-up pipe, copies each device out of
/// libudev and hands it on. Ending the iteration (or dropping the sequence) stops the thread
/// and closes the socket.
public struct UdevMonitor: AsyncSequence, Sendable {
    public typealias Element = UdevEvent

    /// Events waiting for the consumer at most: a storm of `change` events (a flapping disk, a
    /// trigger loop) must not grow the daemon without end. Past it, events are dropped and
    /// counted (`takeDropped`), and the consumer looks at every device again.
    public static let queueLimit = 4096

    private let stream: AsyncStream<UdevEvent>
    private let dropped: DropCounter

    /// Starts listening for `subsystem` (default: block devices).
    public init(subsystem: String = "block") throws {
        guard let udev = udev_new() else { throw UdevError(operation: "udev_new") }
        guard let monitor = udev_monitor_new_from_netlink(udev, "udev") else {
            udev_unref(udev)
            throw UdevError(operation: "udev_monitor_new_from_netlink")
        }
        // A burst of events (a disk shelf powering on, or a test's thousand triggers) must not
        // overflow the socket while the consumer works: the kernel drops what does not fit.
        // As root libudev uses SO_RCVBUFFORCE, beyond net.core.rmem_max.
        _ = udev_monitor_set_receive_buffer_size(monitor, 128 << 20)
        guard udev_monitor_filter_add_match_subsystem_devtype(monitor, subsystem, nil) >= 0,
              udev_monitor_enable_receiving(monitor) >= 0
        else {
            udev_monitor_unref(monitor)
            udev_unref(udev)
            throw UdevError(operation: "udev_monitor_enable_receiving")
        }
        var pipeEnds: [Int32] = [-1, -1]
        guard pipe(&pipeEnds) == 0 else {
            udev_monitor_unref(monitor)
            udev_unref(udev)
            throw UdevError(operation: "pipe")
        }
        for fd in pipeEnds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        _ = fcntl(pipeEnds[1], F_SETFL, O_NONBLOCK)
        let (stream, continuation) = AsyncStream.makeStream(of: UdevEvent.self, bufferingPolicy: .bufferingOldest(Self.queueLimit))
        self.stream = stream
        dropped = DropCounter()
        let handles = MonitorHandles(udev: udev, monitor: monitor, wake: pipeEnds[0], waker: pipeEnds[1])
        continuation.onTermination = { _ in handles.wakeUp() }
        let thread = MonitorThread(handles: handles, continuation: continuation, dropped: dropped)
        thread.start()
    }

    public func makeAsyncIterator() -> AsyncStream<UdevEvent>.Iterator { stream.makeAsyncIterator() }

    /// How many events were dropped since the last call (the queue was full), and starts
    /// counting again.
    public func takeDropped() -> Int { dropped.take() }
}

/// Events the monitor thread could not queue, counted for the consumer.
final class DropCounter: Sendable {
    private let count = Atomic<Int>(0)
    func add() { count.add(1, ordering: .relaxed) }
    func take() -> Int { count.exchange(0, ordering: .relaxed) }
}

/// The libudev handles of one monitor. Made on the caller's thread, then used only by the
/// monitor thread, which frees them when it ends; `wakeUp` (a pipe write) is the one call
/// made from elsewhere.
private final class MonitorHandles: @unchecked Sendable {
    let udev: OpaquePointer
    let monitor: OpaquePointer
    /// The read and write ends of the wake-up pipe.
    let wake: Int32
    let waker: Int32

    init(udev: OpaquePointer, monitor: OpaquePointer, wake: Int32, waker: Int32) {
        self.udev = udev
        self.monitor = monitor
        self.wake = wake
        self.waker = waker
    }

    func wakeUp() {
        var one: UInt8 = 1
        _ = write(waker, &one, 1)
    }

    deinit {
        udev_monitor_unref(monitor)
        udev_unref(udev)
        close(wake)
        close(waker)
    }
}

private final class MonitorThread: @unchecked Sendable {
    let handles: MonitorHandles
    let continuation: AsyncStream<UdevEvent>.Continuation
    let dropped: DropCounter

    init(handles: MonitorHandles, continuation: AsyncStream<UdevEvent>.Continuation, dropped: DropCounter) {
        self.handles = handles
        self.continuation = continuation
        self.dropped = dropped
    }

    func start() {
        var thread = pthread_t()
        let context = Unmanaged.passRetained(self).toOpaque()
        let result = pthread_create(&thread, nil, { context in
            let this = Unmanaged<MonitorThread>.fromOpaque(context!).takeRetainedValue()
            this.run()
            return nil
        }, context)
        if result != 0 {
            Unmanaged<MonitorThread>.fromOpaque(context).release()
            continuation.finish()
        } else {
            pthread_detach(thread)
        }
    }

    private func run() {
        let socket = udev_monitor_get_fd(handles.monitor)
        var fds = [pollfd(fd: socket, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: handles.wake, events: Int16(POLLIN), revents: 0)]
        while true {
            let ready = poll(&fds, nfds_t(fds.count), -1)
            if ready < 0 {
                if errno == EINTR { continue }
                break
            }
            if fds[1].revents != 0 { break }
            // The socket is non-blocking: drain what is queued, then poll again.
            var stopped = false
            while let device = udev_monitor_receive_device(handles.monitor) {
                let action = udev_device_get_action(device).map { String(cString: $0) } ?? ""
                let event = UdevEvent(action: UdevEvent.Action(action), device: UdevContext.copy(device),
                                      sequenceNumber: udev_device_get_seqnum(device))
                udev_device_unref(device)
                switch continuation.yield(event) {
                case .terminated: stopped = true
                case .dropped: dropped.add()
                case .enqueued: break
                @unknown default: break
                }
                if stopped { break }
            }
            if stopped { break }
        }
        continuation.finish()
    }
}
