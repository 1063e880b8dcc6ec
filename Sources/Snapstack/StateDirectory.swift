import Foundation
import SnapstackErrors
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Where snapstack keeps its database, era metadata and default COW stores.
public enum StateDirectory {
    public static let defaultPath: FilePath = "/var/lib/snapstack"
    public static let environmentVariable = "SNAPSTACK_STATE_DIR"

    /// `--state-dir` if given, else `$SNAPSTACK_STATE_DIR` if set and non-empty, else the default.
    public static func resolve(option: String?) -> FilePath {
        if let option, !option.isEmpty { return FilePath(option) }
        if let value = getenv(environmentVariable).map({ String(cString: $0) }), !value.isEmpty {
            return FilePath(value)
        }
        return defaultPath
    }

    /// Creates `path` (0700, with its parents) unless it exists.
    public static func make(_ path: FilePath) throws {
        do {
            try FileManager.default.createDirectory(
                atPath: path.string, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw SnapstackError(.failed, "cannot create the state directory \(path)", why: "\(error)",
                                 remedy: "run as root, or name a writable directory with --state-dir")
        }
    }

    /// Whether snapstack could keep its state in `path`, changing nothing: an existing directory
    /// must take a new file (created and removed again); a missing one must be creatable, so
    /// its nearest existing ancestor must be a writable directory. Nil when usable, else why not.
    public static func probe(_ path: FilePath) -> String? {
        var existing = path
        var st = stat()
        while stat(existing.string, &st) != 0 {
            guard errno == ENOENT, !existing.removingLastComponent().isEmpty, existing != existing.removingLastComponent()
            else { return "cannot look at \(existing): \(Errno(rawValue: errno))" }
            existing = existing.removingLastComponent()
        }
        guard (st.st_mode & S_IFMT) == S_IFDIR else { return "\(existing) is not a directory" }
        guard existing == path else {
            return access(existing.string, W_OK | X_OK) == 0
                ? nil : "\(path) does not exist and \(existing) is not writable: \(Errno(rawValue: errno))"
        }
        let probe = path.appending(".probe-\(getpid())")
        do {
            let fd = try FileDescriptor.open(probe, .writeOnly, options: [.create, .exclusiveCreate, .closeOnExec],
                                             permissions: [.ownerReadWrite])
            try fd.close()
            if unlink(probe.string) != 0 { throw Errno(rawValue: errno) }
        } catch {
            return "cannot write in \(path): \(error)"
        }
        return nil
    }
}
