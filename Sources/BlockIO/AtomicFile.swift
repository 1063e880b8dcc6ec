import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Small files replaced whole, so that a reader sees the old contents or the new, never a mix,
/// and a power cut leaves one of the two: written to a temporary beside the file, fsynced,
/// renamed over it, and the directory fsynced (a rename is durable only once its directory is).
public enum AtomicFile {
    /// Replaces `path` with `bytes`, mode `permissions` whatever the umask. The temporary,
    /// `.NAME.PID.tmp` in the same directory, is created exclusively: a symbolic link planted
    /// there is not followed, and one left by a process that died with this pid is removed first.
    public static func replace(_ path: FilePath, with bytes: [UInt8], permissions: mode_t = 0o644) throws(BlockIOError) {
        guard let name = path.lastComponent?.string, name != ".", name != ".." else {
            throw BlockIOError(path: path, reason: .system(operation: "open", .isDirectory))
        }
        let temporary = path.containingDirectory.appending(".\(name).\(getpid()).tmp")
        _ = unlink(temporary.string)
        do throws(BlockIOError) {
            let file: Int32
            switch openFile(temporary.string, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, permissions) {
            case .success(let fd): file = fd
            case .failure(let error): throw BlockIOError(temporary, "open (create exclusively)", error)
            }
            var failure: BlockIOError?
            if case .failure(let error) = bytes.withUnsafeBytes({ writeFully(file, $0) }) {
                failure = BlockIOError(temporary, "write", error)
            } else if case .failure(let error) = retryingInterrupts({ fchmod(file, permissions) }) {
                failure = BlockIOError(temporary, "fchmod", error)
            } else if case .failure(let error) = syncDescriptor(file) {
                failure = BlockIOError(temporary, "fsync", error)
            }
            if let error = closeFile(file), failure == nil {
                failure = BlockIOError(temporary, "close", error)
            }
            if let failure { throw failure }
            if rename(temporary.string, path.string) != 0 {
                throw BlockIOError(path, "rename from \(temporary)", Errno(rawValue: errno))
            }
        } catch {
            _ = unlink(temporary.string)
            throw error
        }
        try syncDirectory(of: path)
    }

    /// fsync of the directory holding `path`: a new name is durable only once its directory is.
    public static func syncDirectory(of path: FilePath) throws(BlockIOError) {
        var directory = path
        directory.removeLastComponent()
        if directory.isEmpty { directory = "." }
        let descriptor: FileDescriptor
        switch openDescriptor(directory.string, O_RDONLY | O_DIRECTORY) {
        case .success(let opened): descriptor = opened
        case .failure(let error): throw BlockIOError(directory, "open", error)
        }
        defer { _ = closeDescriptor(descriptor) }  // read-only: the fsync result is what counts
        if case .failure(let error) = retryingInterrupts({ fsync(descriptor.rawValue) }) {
            throw BlockIOError(directory, "fsync", error)
        }
    }
}

extension FilePath {
    /// The directory that holds this path: `.` for a bare name.
    public var containingDirectory: FilePath {
        let directory = removingLastComponent()
        return directory.isEmpty ? "." : directory
    }
}
