import SystemPackage

/// A copy that failed or was cancelled: what was being done, to which file, at which offset, and
/// the cause (the kernel's errno for a failed system call).
public struct CopyError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Reason: Hashable, Sendable {
        /// A system call or ioctl failed with this errno.
        case system(Errno)
        /// `CancellationFlag.cancel()` was called; the copy stopped between two I/Os.
        case cancelled
        /// Options or extents that cannot be honoured (the text says which and why).
        case invalidRequest(String)
        /// The source ended before an extent did: it shrank, or its size was misread.
        case unexpectedEnd(expected: UInt64, got: UInt64)
        /// The source is neither a block device nor a regular file.
        case unsupportedSource
        /// A delta stream whose bytes are not what its writer wrote (`record` counts from 0;
        /// nil when the stream header itself is damaged).
        case corruptStream(record: UInt64?, what: String)
        /// A delta stream that ends before its end record.
        case truncatedStream(record: UInt64, what: String)
    }

    /// The system call or step: "pread", "pwrite", "fallocate(PUNCH_HOLE)", "BLKZEROOUT", ...
    public var operation: String
    public var path: String
    /// The byte offset in the file or device (for a stream: in the stream) where it failed.
    public var offset: UInt64?
    public var reason: Reason

    public init(operation: String, path: String, offset: UInt64? = nil, reason: Reason) {
        self.operation = operation
        self.path = path
        self.offset = offset
        self.reason = reason
    }

    init(_ operation: String, _ path: String, offset: UInt64? = nil, _ errno: Errno) {
        self.init(operation: operation, path: path, offset: offset, reason: .system(errno))
    }

    static func cancelled(_ path: String, at offset: UInt64?) -> CopyError {
        CopyError(operation: "copy", path: path, offset: offset, reason: .cancelled)
    }

    static func invalid(_ path: String, _ text: String) -> CopyError {
        CopyError(operation: "plan", path: path, reason: .invalidRequest(text))
    }

    /// True when the copy stopped because it was asked to, not because something failed.
    public var isCancelled: Bool { reason == .cancelled }

    /// The kernel's errno, when a system call failed.
    public var errno: Errno? {
        if case .system(let errno) = reason { return errno }
        return nil
    }

    public var description: String {
        let at = offset.map { " at offset \($0)" } ?? ""
        switch reason {
        case .system(.brokenPipe):
            return "\(path): \(operation) failed\(at): the reader closed the pipe (\(Errno.brokenPipe))"
        case .system(let errno):
            return "\(path): \(operation) failed\(at): \(errno)"
        case .cancelled:
            return "\(path): copy cancelled\(at)"
        case .invalidRequest(let text):
            return "\(path): \(text)"
        case .unexpectedEnd(let expected, let got):
            return "\(path): \(operation)\(at) returned \(got) of \(expected) bytes: the source ended early (did it shrink?)"
        case .unsupportedSource:
            return "\(path): not a block device or regular file"
        case .corruptStream(let record, let what):
            let which = record.map { "record \($0)" } ?? "stream header"
            return "\(path): corrupt delta stream: \(which)\(at.isEmpty ? "" : " (stream offset \(offset!))"): \(what)"
        case .truncatedStream(let record, let what):
            return "\(path): truncated delta stream: \(what) (record \(record), stream offset \(offset ?? 0))"
        }
    }
}
