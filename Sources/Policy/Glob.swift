#if canImport(Glibc)
import Glibc
#endif

/// A shell glob as udev rules write them (`*`, `?`, `[...]`), matched with fnmatch(3) and no
/// flags, so that `*` also crosses `/` and `:` in values such as `ID_PATH`.
public struct Glob: Sendable, Equatable, CustomStringConvertible {
    public let pattern: String

    /// Refuses a pattern fnmatch would silently read otherwise: an unclosed `[` or a trailing `\`.
    public init(_ pattern: String) throws(GlobError) {
        var characters = Array(pattern.unicodeScalars)[...]
        while let c = characters.popFirst() {
            switch c {
            case "\\":
                guard characters.popFirst() != nil else { throw GlobError(reason: "it ends with a lone backslash") }
            case "[":
                // A `]` right after `[` or `[!` is a member, not the end.
                if characters.first == "!" || characters.first == "^" { characters.removeFirst() }
                if characters.first == "]" { characters.removeFirst() }
                guard let close = characters.firstIndex(of: "]") else {
                    throw GlobError(reason: "a [ is not closed by ]")
                }
                characters = characters[characters.index(after: close)...]
            default:
                break
            }
        }
        self.pattern = pattern
    }

    /// fnmatch(3) of `value` against the pattern.
    public func matches(_ value: String) -> Bool { fnmatch(pattern, value, 0) == 0 }

    public var description: String { pattern }
}

public struct GlobError: Error, Equatable {
    public var reason: String
}
