/// Why a report could not be printed as asked. Every description is a complete message for
/// the user, naming what was wrong and what would be accepted.
public enum ReportError: Error, Equatable, CustomStringConvertible {
    /// `-o` named a field the report does not have; `known` is every field it has.
    case unknownField(String, known: [ReportField])
    /// `-o` selected nothing, e.g. `-o -name` removed the only default field.
    case noFields
    /// `--units` was not one of the accepted letters.
    case invalidUnits(String)
    /// `-o help` was given: not a failure but a request, carrying the text of ``fieldHelp(_:)``
    /// so that a command can print it and exit successfully.
    case help(String)

    public var description: String {
        switch self {
        case let .unknownField(name, known):
            let choices = known.map { "\($0.name) (\($0.help))" }.joined(separator: ", ")
            return "unknown field \"\(name)\"; choose from: \(choices)"
        case .noFields:
            return "no fields selected; name at least one with -o (see -o help)"
        case let .invalidUnits(text):
            return "invalid units \"\(text)\"; use one letter: h (human-readable, powers of 1024), "
                + "H (human-readable, powers of 1000), b (bytes), s (512-byte sectors), "
                + "k m g t p e (KiB to EiB) or K M G T P E (kB to EB)"
        case let .help(text):
            return text
        }
    }
}
