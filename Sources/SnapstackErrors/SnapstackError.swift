/// A refusal or failure of a snapstack operation, phrased for the person who asked: what
/// failed, why, and what to do. `kind` decides the command's exit status.
public struct SnapstackError: Error, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// The operation was tried and failed.
        case failed
        /// No device-mapper or a missing target.
        case kernelUnsupported
        /// The device, snapshot or file named does not exist.
        case notFound
        /// The system's state forbids it: mounted, open, busy, already protected, too small...
        case refused
        /// An argument is malformed (a name, a size).
        case invalidArgument
        /// Another snapstack process holds the state lock.
        case locked
        /// The state database cannot be read.
        case stateUnreadable
        /// An image is incomplete or does not match its checksums.
        case verificationFailed
        /// Change tracking was interrupted since the base of an incremental: it would miss writes.
        case trackingInterrupted
    }

    public var kind: Kind
    public var what: String
    public var why: String?
    public var remedy: String?
    /// The error underneath, kept for logs and for `--verbose`.
    public var cause: (any Error)?
    /// Set when undoing the partial work failed too.
    public var rollbackFailure: String?

    public init(_ kind: Kind, _ what: String, why: String? = nil, remedy: String? = nil,
                cause: (any Error)? = nil, rollbackFailure: String? = nil) {
        self.kind = kind
        self.what = what
        self.why = why
        self.remedy = remedy
        self.cause = cause
        self.rollbackFailure = rollbackFailure
    }

    /// One line: "what: why; remedy".
    public var description: String {
        var text = what
        if let why { text += ": " + why }
        if let remedy { text += "; " + remedy }
        if let rollbackFailure { text += " (undoing it failed as well: \(rollbackFailure))" }
        return text.replacingNewlines
    }
}

extension String {
    /// Error text is one line: a newline inside a name or a kernel message is shown, not obeyed.
    public var replacingNewlines: String {
        var out = ""
        for c in self { out += c == "\n" ? "\\n" : String(c) }
        return out
    }
}
