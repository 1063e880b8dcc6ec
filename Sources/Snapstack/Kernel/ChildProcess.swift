import CShims
import Foundation
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A program run to its end with no input, both output streams captured.
///
/// Spawned with `posix_spawn` and reaped with `waitpid`, not with Foundation's `Process`: on
/// Linux that learns of a child's end through a run-loop source fed by a socket pair, and under
/// the service's sandbox, where making that pair can fail ("Could not create wakeup socket pair
/// for CFSocket"), `waitUntilExit` waited for an LVM command that had long ended — the daemon
/// then hung in its start-up reconcile, holding up the boot.
public struct ChildProcess {
    /// The exit status; 128 + N when signal N ended the program.
    public var status: Int32
    public var stdout: String
    public var stderr: String

    /// Throws only when the program cannot be started.
    public static func run(_ executable: String, _ arguments: [String]) throws -> ChildProcess {
        var output: [Int32] = [-1, -1], errors: [Int32] = [-1, -1]
        guard snapstack_pipe_cloexec(&output) == 0 else { throw Errno(rawValue: errno) }
        guard snapstack_pipe_cloexec(&errors) == 0 else {
            let error = errno
            close(output[0]); close(output[1])
            throw Errno(rawValue: error)
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        // dup2 clears close-on-exec on the copies; the pipes' own ends close at exec.
        posix_spawn_file_actions_adddup2(&actions, output[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errors[1], 2)
        snapstack_spawn_add_closefrom(&actions, 3)
        // The child starts with no signal blocked and every handler at its default, whatever
        // this process blocks or ignores (a freeze window blocks the termination signals).
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t(), all = sigset_t()
        sigemptyset(&none)
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
        close(output[1])
        close(errors[1])
        guard spawned == 0 else {
            close(output[0]); close(errors[0])
            throw Errno(rawValue: spawned)
        }
        // stderr is drained beside stdout, so that a child filling one pipe cannot stall.
        let errorData = LockedData()
        let drained = DispatchSemaphore(value: 0)
        let errorEnd = errors[0]
        DispatchQueue.global().async {
            errorData.set(readToEnd(errorEnd))
            drained.signal()
        }
        let outputData = readToEnd(output[0])
        drained.wait()
        close(output[0])
        close(errors[0])
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
        // The wait status: the low 7 bits name the ending signal (0: an exit, whose code is in
        // the next byte).
        let signal = status & 0x7F
        return ChildProcess(status: signal == 0 ? (status >> 8) & 0xFF : 128 + signal,
                            stdout: String(decoding: outputData, as: UTF8.self),
                            stderr: String(decoding: errorData.get(), as: UTF8.self))
    }

    /// Everything `descriptor` gives until its end (or a read error).
    private static func readToEnd(_ descriptor: Int32) -> Data {
        var data = Data()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count > 0 {
                data.append(contentsOf: buffer[..<count])
            } else if count == 0 || errno != EINTR {
                return data
            }
        }
    }
}

private final class LockedData: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    func set(_ value: Data) { lock.withLock { data = value } }
    func get() -> Data { lock.withLock { data } }
}
