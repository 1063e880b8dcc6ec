/// A device-name template over udev properties, in the shell's parameter-expansion syntax:
/// `${PROP}` (the value, empty if absent), `${PROP:-TEXT}` (TEXT when PROP is empty or absent),
/// `${PROP:+TEXT}` (TEXT when PROP has a value, else nothing). TEXT is a template itself, so `${ID_SERIAL:-${KERNEL}}` falls back to another property.
///
/// Literal text may use only the characters a device name allows (letters, digits and
/// `# + - . : = @ _`); characters of substituted values outside that set become `_`, and the
/// result is cut to 64 characters, so that any device yields a valid name or an empty one.
public struct NameTemplate: Sendable, Equatable, CustomStringConvertible {
    public static let maximumLength = 64

    indirect enum Part: Sendable, Equatable {
        case literal(String)
        case property(String)
        case fallback(String, [Part])
        case alternative(String, [Part])
    }

    public let source: String
    let parts: [Part]

    /// Parses `source`; on a syntax error, `column` is the 1-based position in `source`.
    public init(_ source: String) throws(TemplateError) {
        var parser = Parser(scalars: Array(source.unicodeScalars))
        let parts = try parser.parseParts(nested: false)
        self.source = source
        self.parts = parts
    }

    public var description: String { source }

    /// The name for a device with these properties.
    public func expand(_ properties: [String: String]) -> String {
        var result = Self.render(parts, properties)
        if result.count > Self.maximumLength { result = String(result.prefix(Self.maximumLength)) }
        return result
    }

    static func render(_ parts: [Part], _ properties: [String: String]) -> String {
        var out = ""
        for part in parts {
            switch part {
            case .literal(let text):
                out += text
            case .property(let name):
                out += sanitized(properties[name] ?? "")
            case .fallback(let name, let alternative):
                let value = properties[name] ?? ""
                out += value.isEmpty ? render(alternative, properties) : sanitized(value)
            case .alternative(let name, let text):
                if !(properties[name] ?? "").isEmpty { out += render(text, properties) }
            }
        }
        return out
    }

    static func isNameCharacter(_ c: Unicode.Scalar) -> Bool {
        c.isASCII && (("a"..."z").contains(c) || ("A"..."Z").contains(c) || ("0"..."9").contains(c) || "#+-.:=@_".unicodeScalars.contains(c))
    }

    static func sanitized(_ value: String) -> String {
        String(String.UnicodeScalarView(value.unicodeScalars.map { isNameCharacter($0) ? $0 : "_" }))
    }

    struct Parser {
        let scalars: [Unicode.Scalar]
        var position = 0

        init(scalars: [Unicode.Scalar]) { self.scalars = scalars }

        func error(_ reason: String, at index: Int? = nil) -> TemplateError {
            TemplateError(reason: reason, column: (index ?? position) + 1)
        }

        /// Parts up to the end, or (nested) up to the `}` that closes the enclosing `${`.
        mutating func parseParts(nested: Bool) throws(TemplateError) -> [Part] {
            var parts: [Part] = []
            var literal = ""
            func flush() {
                if !literal.isEmpty { parts.append(.literal(literal)); literal = "" }
            }
            while position < scalars.count {
                let c = scalars[position]
                if c == "}" && nested { flush(); return parts }
                if c == "$" {
                    guard position + 1 < scalars.count, scalars[position + 1] == "{" else {
                        throw error("a $ must start ${PROPERTY} ($ itself is not allowed in a device name)")
                    }
                    flush()
                    parts.append(try parseExpansion())
                    continue
                }
                guard NameTemplate.isNameCharacter(c) else {
                    throw error("\"\(c)\" is not allowed in a device name (letters, digits and # + - . : = @ _ are)")
                }
                literal.unicodeScalars.append(c)
                position += 1
            }
            if nested { throw error("a ${ is not closed by }") }
            flush()
            return parts
        }

        /// `${NAME}`, `${NAME:-TEXT}` or `${NAME:+TEXT}`, starting at the `$`.
        mutating func parseExpansion() throws(TemplateError) -> Part {
            let start = position
            position += 2
            var name = ""
            while position < scalars.count, scalars[position] == "_" || (scalars[position].isASCII && scalars[position].properties.isAlphabetic)
                    || ("0"..."9").contains(scalars[position]) {
                name.unicodeScalars.append(scalars[position])
                position += 1
            }
            guard !name.isEmpty else { throw error("expected a property name after ${") }
            guard position < scalars.count else { throw error("a ${ is not closed by }", at: start) }
            switch scalars[position] {
            case "}":
                position += 1
                return .property(name)
            case ":":
                guard position + 1 < scalars.count, scalars[position + 1] == "-" || scalars[position + 1] == "+" else {
                    throw error("expected :- or :+ after ${\(name)")
                }
                let fallback = scalars[position + 1] == "-"
                position += 2
                let text = try parseParts(nested: true)
                guard position < scalars.count, scalars[position] == "}" else { throw error("a ${ is not closed by }", at: start) }
                position += 1
                return fallback ? .fallback(name, text) : .alternative(name, text)
            default:
                throw error("\"\(scalars[position])\" cannot follow ${\(name) (write ${NAME}, ${NAME:-TEXT} or ${NAME:+TEXT})")
            }
        }
    }
}

public struct TemplateError: Error, Equatable {
    public var reason: String
    /// 1-based position within the template.
    public var column: Int
}
