import Foundation
import Logging
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#endif

/// Sends one datagram to the AF_UNIX socket at `address`: a path, or an abstract name written
/// with a leading `@` (as systemd writes `$NOTIFY_SOCKET`). Returns the errno on failure.
func sendDatagram(_ payload: [UInt8], to address: String) -> Int32? {
    let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { return errno }
    defer { close(fd) }
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    var path = Array(address.utf8)
    let abstract = path.first == UInt8(ascii: "@")
    if abstract { path[0] = 0 }
    let capacity = MemoryLayout.size(ofValue: addr.sun_path)
    guard !path.isEmpty, path.count < capacity else { return ENAMETOOLONG }
    withUnsafeMutableBytes(of: &addr.sun_path) { raw in
        raw.copyBytes(from: path)
        if !abstract { raw[path.count] = 0 }
    }
    // An abstract name is exactly its bytes; a path may carry its NUL.
    let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + path.count + (abstract ? 0 : 1))
    let sent = payload.withUnsafeBytes { bytes in
        withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                sendto(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL), $0, length)
            }
        }
    }
    return sent < 0 ? errno : nil
}

/// The service manager's notification protocol (sd_notify(3)), spoken directly: a datagram of
/// `KEY=VALUE` lines to the socket in `$NOTIFY_SOCKET`. The protocol is small and documented
/// as stable, so snapstack needs no libsystemd for it, and runs the same without systemd (no
/// `$NOTIFY_SOCKET`: every call does nothing).
public struct SystemdNotifier: Sendable {
    /// `$NOTIFY_SOCKET`, nil when not run by a service manager.
    public let socket: String?

    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        socket = environment["NOTIFY_SOCKET"].flatMap { $0.isEmpty ? nil : $0 }
    }

    /// Sends `fields` (`READY=1`, `STATUS=...`); true when a manager received it.
    @discardableResult
    public func notify(_ fields: [(String, String)]) -> Bool {
        guard let socket, socket.hasPrefix("/") || socket.hasPrefix("@") else { return false }
        let text = fields.map { "\($0.0)=\($0.1.replacingOccurrences(of: "\n", with: " "))" }.joined(separator: "\n")
        return sendDatagram(Array(text.utf8), to: socket) == nil
    }

    public func ready(status: String) { notify([("READY", "1"), ("STATUS", status)]) }
    public func status(_ text: String) { notify([("STATUS", text)]) }
    public func reloading() { notify([("RELOADING", "1")]) }
    public func stopping() { notify([("STOPPING", "1"), ("STATUS", "stopping")]) }
}

/// Pings the service manager's watchdog (`WATCHDOG=1`) at half the interval it asked for in
/// `$WATCHDOG_USEC` (for this process, when `$WATCHDOG_PID` names one), as long as the daemon's
/// worker is not stuck in one operation for longer than `stuckAfter`: a hung daemon is then
/// restarted by the manager. Without `$WATCHDOG_USEC` it returns at once.
struct WatchdogService: Service {
    let notifier: SystemdNotifier
    let interval: Duration?
    let worker: Worker
    let stuckAfter: Duration
    let logger: Logger

    init(notifier: SystemdNotifier, worker: Worker, stuckAfter: Duration, logger: Logger,
         environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.notifier = notifier
        self.worker = worker
        self.stuckAfter = stuckAfter
        self.logger = logger
        if let text = environment["WATCHDOG_USEC"], let usec = UInt64(text), usec > 0,
           environment["WATCHDOG_PID"].map({ $0 == String(getpid()) }) ?? true {
            interval = .microseconds(Int64(usec / 2))
        } else {
            interval = nil
        }
    }

    func run() async throws {
        guard let interval else { return }
        logger.debug("watchdog enabled", metadata: ["interval": "\(interval)"])
        // The sleep between pings ends at a graceful shutdown too: a stop (and with it every
        // shutdown of the machine) must not wait up to half the watchdog period for the next ping.
        try? await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                if let busy = worker.busyFor(), busy > stuckAfter {
                    logger.error("an operation has run for \(busy); not pinging the watchdog")
                } else {
                    notifier.notify([("WATCHDOG", "1")])
                }
                try await Task.sleep(for: interval)
            }
        }
    }
}
