import Foundation
import SnapstackErrors
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A lock between processes: `flock(2)` on a file, released by the kernel when the process
/// dies (a crash never leaves it held). It serialises snapstack processes on one state
/// directory (`<state>/lock`) and writers of one image (`IMAGE.lock`). The holder writes its
/// pid and command line into the file, so that a waiter can say who it is waiting for.
///
/// The file is opened without following a symbolic link: it lives in directories that others
/// may write (an image's), and the holder truncates it.
public final class FileLock {
    public enum Mode: Sendable { case shared, exclusive }

    private let fd: FileDescriptor

    /// Takes the lock, waiting up to `timeout` seconds for the holder to finish. `name` picks
    /// another lock file in `directory`, for a lock narrower than the whole state. `owner`
    /// names who else takes it, for the message; a lock file of another program's is not
    /// written into (`recordsHolder` false).
    /// `subject` is what the holder is said to work on (the directory by default), and
    /// `remedy` replaces the advice to wait longer.
    public init(directory: FilePath, name: String = "lock", mode: Mode, timeout: Double,
                owner: String = "another snapstack process", recordsHolder: Bool = true,
                subject: String? = nil, remedy: String? = nil) throws {
        let path = directory.appending(name)
        do {
            fd = try FileDescriptor.open(path, .readWrite, options: [.create, .closeOnExec, .noFollow],
                                         permissions: [.ownerReadWrite])
        } catch {
            throw SnapstackError(.failed, "cannot open the lock file \(path)", why: "\(error)",
                                 remedy: "check that \(directory) exists and may be written by this user (snapstack runs as root)")
        }
        let operation = (mode == .exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB
        let deadline = Date().addingTimeInterval(timeout)
        while flock(fd.rawValue, operation) != 0 {
            let code = errno
            guard code == EWOULDBLOCK || code == EINTR else {
                try? fd.close()
                throw SnapstackError(.failed, "cannot lock \(path)", why: "\(Errno(rawValue: code))")
            }
            if Date() >= deadline {
                let holder = Self.holder(fd)
                try? fd.close()
                throw SnapstackError(
                    .locked, "\(owner) is working on \(subject ?? (recordsHolder ? directory.string : path.string))",
                    why: holder.map { "held by \($0)" } ?? "the lock is held",
                    remedy: remedy ?? String(format: "waited %.0f s; wait for it to finish or raise --lock-timeout", timeout))
            }
            usleep(50_000)
        }
        if mode == .exclusive && recordsHolder {
            let me = "pid \(getpid()) (\(CommandLine.arguments.joined(separator: " ")))\n"
            _ = try? fd.resize(to: 0)
            _ = try? fd.writeAll(toAbsoluteOffset: 0, Array(me.utf8))
        }
    }

    deinit {
        // Closing the descriptor releases the flock.
        try? fd.close()
    }

    private static func holder(_ fd: FileDescriptor) -> String? {
        var buffer = [UInt8](repeating: 0, count: 512)
        let count = (try? buffer.withUnsafeMutableBytes { try fd.read(fromAbsoluteOffset: 0, into: $0) }) ?? 0
        let text = String(decoding: buffer.prefix(count), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return text.isEmpty ? nil : text.replacingNewlines
    }
}
