import BlockIO
import Foundation
import Yams

#if canImport(Glibc)
import Glibc
#endif

/// A configuration file that cannot be used: where (1-based line and column) and why.
public struct PolicyError: Error, Equatable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var column: Int
    public var reason: String

    public init(file: String, line: Int, column: Int, reason: String) {
        self.file = file
        self.line = line
        self.column = column
        self.reason = reason
    }

    /// `FILE:LINE:COLUMN: reason`, as compilers say it, on one line.
    public var description: String {
        let location = line > 0 ? "\(file):\(line):\(column)" : file
        return "\(location): \(reason.replacingOccurrences(of: "\n", with: " "))"
    }
}

extension Policy {
    /// Reads and checks the file at `path`. A missing file at the default path is not an error
    /// for the caller to decide here: this throws, with line 0.
    public static func load(path: String) throws(PolicyError) -> Policy {
        guard let data = FileManager.default.contents(atPath: path) else {
            // FileManager gives no reason; access(2) does.
            let reason = access(path, R_OK) == 0 ? "it is not a readable file" : String(cString: strerror(errno))
            throw PolicyError(file: path, line: 0, column: 0, reason: "cannot read it: \(reason)")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw PolicyError(file: path, line: 0, column: 0, reason: "it is not UTF-8 text")
        }
        return try Policy(parsing: text, file: path)
    }

    /// Parses and checks a whole configuration. Everything is checked before anything is used:
    /// unknown keys, malformed globs, sizes and templates are errors that name their line.
    public init(parsing text: String, file: String) throws(PolicyError) {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw PolicyParser.yamlError(error, file: file)
        } catch {
            throw PolicyError(file: file, line: 0, column: 0, reason: "\(error)")
        }
        var parser = PolicyParser(file: file)
        self = try parser.policy(root)
    }
}

struct PolicyParser {
    let file: String

    static func yamlError(_ error: YamlError, file: String) -> PolicyError {
        switch error {
        case .scanner(let context, let problem, let mark, _), .parser(let context, let problem, let mark, _),
             .composer(let context, let problem, let mark, _):
            let what = [context?.text, problem].compactMap { $0 }.filter { !$0.isEmpty }.joined(separator: ": ")
            return PolicyError(file: file, line: mark.line, column: mark.column, reason: "not valid YAML: \(what)")
        case .duplicatedKeysInMapping(let duplicates, let context):
            return PolicyError(file: file, line: context.mark.line, column: context.mark.column,
                               reason: "key \(duplicates.joined(separator: ", ")) is given twice")
        case .reader(let problem, _, _, _):
            return PolicyError(file: file, line: 0, column: 0, reason: "not valid YAML: \(problem)")
        default:
            return PolicyError(file: file, line: 0, column: 0, reason: "not valid YAML: \(error)")
        }
    }

    func error(_ node: Node?, _ reason: String) -> PolicyError {
        PolicyError(file: file, line: node?.mark?.line ?? 0, column: node?.mark?.column ?? 0, reason: reason)
    }

    static func isNull(_ node: Node) -> Bool {
        guard case .scalar(let scalar) = node, scalar.style == .plain || scalar.style == .any else { return false }
        return ["", "~", "null", "Null", "NULL"].contains(scalar.string)
    }

    /// The pairs of a mapping whose keys are plain strings; rejects keys not in `allowed`
    /// (nil allows any).
    func mapping(_ node: Node, _ what: String, allowed: [String]?) throws(PolicyError) -> [(key: String, keyNode: Node, value: Node)] {
        guard case .mapping(let mapping) = node else {
            throw error(node, "\(what) must be a mapping of keys to values")
        }
        var result: [(String, Node, Node)] = []
        for (key, value) in mapping {
            guard case .scalar(let scalar) = key else { throw error(key, "a key in \(what) must be a plain word") }
            if let allowed, !allowed.contains(scalar.string) {
                throw error(key, "unknown key \"\(scalar.string)\" in \(what) (known: \(allowed.joined(separator: ", ")))")
            }
            result.append((scalar.string, key, value))
        }
        return result
    }

    func string(_ node: Node, _ what: String) throws(PolicyError) -> String {
        guard case .scalar(let scalar) = node, !Self.isNull(node) else { throw error(node, "\(what) must be a single value") }
        return scalar.string
    }

    func bool(_ node: Node, _ what: String) throws(PolicyError) -> Bool {
        switch try string(node, what).lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        case let other: throw error(node, "\(what) must be true or false, not \"\(other)\"")
        }
    }

    func size(_ node: Node, _ what: String) throws(PolicyError) -> Bytes {
        let text = try string(node, what)
        do { return try Bytes(parsing: text) } catch {
            throw self.error(node, "\(what) \"\(text)\" is not a size (\(error.reason); write e.g. 64K, 512M, 2G)")
        }
    }

    /// `5s`, `500ms`, `2m`, `1h`; a bare number is seconds.
    func duration(_ node: Node, _ what: String) throws(PolicyError) -> Duration {
        let text = try string(node, what)
        let units: [(String, Int64)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("", 1000)]
        for (suffix, milliseconds) in units where text.hasSuffix(suffix) {
            let number = text.dropLast(suffix.count)
            if let value = Int64(number), value > 0, value <= 86_400_000 / milliseconds {
                return .milliseconds(value * milliseconds)
            }
        }
        throw error(node, "\(what) \"\(text)\" is not a duration (write e.g. 500ms, 5s, 1m)")
    }

    mutating func policy(_ root: Node?) throws(PolicyError) -> Policy {
        var policy = Policy(file: file)
        guard let root, !Self.isNull(root) else { return policy }   // an empty file: no rules
        for (key, keyNode, value) in try mapping(root, "the file", allowed: ["version", "rules", "stores", "metrics"]) {
            switch key {
            case "version":
                guard try string(value, "version") == "1" else {
                    throw error(value, "version must be 1 (this snapstack reads version 1 files)")
                }
            case "rules":
                if Self.isNull(value) { continue }
                guard case .sequence(let sequence) = value else {
                    throw error(value, "rules must be a list (each rule starts with \"- \")")
                }
                for node in sequence { policy.rules.append(try rule(node)) }
            case "stores":
                if Self.isNull(value) { continue }
                policy.stores = try stores(value)
            case "metrics":
                if Self.isNull(value) { continue }
                policy.metrics = try metrics(value)
            default:
                throw error(keyNode, "unknown key \"\(key)\"")
            }
        }
        return policy
    }

    func rule(_ node: Node) throws(PolicyError) -> Rule {
        let pairs = try mapping(node, "a rule", allowed: ["name", "match", "protect", "exclude"])
        var label: String?
        var properties: [PropertyMatch] = []
        var minimum: Bytes?, maximum: Bytes?
        var action: Rule.Action?
        var exclude = false
        for (key, _, value) in pairs {
            switch key {
            case "name":
                label = try string(value, "a rule's name")
            case "match":
                if Self.isNull(value) { continue }
                for (property, keyNode, globs) in try mapping(value, "match", allowed: nil) {
                    switch property {
                    case "min-size": minimum = try size(globs, "min-size")
                    case "max-size": maximum = try size(globs, "max-size")
                    default:
                        guard !property.isEmpty, property.unicodeScalars.allSatisfy({
                            ("A"..."Z").contains($0) || ("0"..."9").contains($0) || $0 == "_"
                        }) else {
                            throw error(keyNode, "unknown match key \"\(property)\": udev properties are written in capitals (ID_SERIAL, ID_FS_TYPE, ID_PATH, DEVTYPE, KERNEL...), sizes as min-size and max-size")
                        }
                        properties.append(PropertyMatch(property: property, globs: try self.globs(globs, property)))
                    }
                }
            case "protect":
                action = .protect(try protect(value))
            case "exclude":
                exclude = try bool(value, "exclude")
            default:
                break
            }
        }
        if let minimum, let maximum, minimum > maximum {
            throw error(node, "min-size is larger than max-size: no device can match")
        }
        switch (action, exclude) {
        case (.some, true):
            throw error(node, "a rule either protects or excludes, not both")
        case (nil, true):
            action = .exclude
        case (nil, false):
            throw error(node, "the rule says neither protect: nor exclude: true")
        default:
            break
        }
        return Rule(label: label, line: node.mark?.line ?? 0, properties: properties,
                    minimumSize: minimum, maximumSize: maximum, action: action!)
    }

    func globs(_ node: Node, _ property: String) throws(PolicyError) -> [Glob] {
        let nodes: [Node]
        if case .sequence(let sequence) = node {
            nodes = Array(sequence)
            guard !nodes.isEmpty else { throw error(node, "\(property) lists no pattern") }
        } else {
            nodes = [node]
        }
        var result: [Glob] = []
        for item in nodes {
            let pattern = Self.isNull(item) ? "" : try string(item, property)
            do { result.append(try Glob(pattern)) } catch {
                throw self.error(item, "\(property): the pattern \"\(pattern)\" is malformed: \(error.reason)")
            }
        }
        return result
    }

    func protect(_ node: Node) throws(PolicyError) -> ProtectAction {
        var template = ProtectAction.defaultNameTemplate
        var templateNode: Node?
        var cbtBlock: Bytes? = ProtectAction.defaultCBTBlock
        var cbtNode: Node?
        var noCBT = false
        if !Self.isNull(node) {
            for (key, _, value) in try mapping(node, "protect", allowed: ["name", "cbt-block", "no-cbt"]) {
                switch key {
                case "name":
                    template = try string(value, "the name template")
                    templateNode = value
                case "cbt-block":
                    if try string(value, "cbt-block") == "auto" {
                        cbtBlock = ProtectAction.automaticCBTBlock
                        cbtNode = value
                        continue
                    }
                    let block = try size(value, "cbt-block")
                    guard block.rawValue % 4096 == 0, block >= .kibibytes(4), block <= .gibibytes(1) else {
                        throw error(value, "cbt-block must be auto, or a multiple of 4K between 4K and 1G")
                    }
                    cbtBlock = block
                    cbtNode = value
                default:
                    noCBT = try bool(value, "no-cbt")
                }
            }
        }
        if noCBT {
            if let cbtNode { throw error(cbtNode, "cbt-block and no-cbt: true exclude each other") }
            cbtBlock = nil
        }
        do {
            return ProtectAction(name: try NameTemplate(template), cbtBlock: cbtBlock)
        } catch {
            // Point at the character when the template is a plain scalar on one line.
            var column = templateNode?.mark?.column ?? 0
            if column > 0, case .scalar(let scalar)? = templateNode {
                column += error.column - 1 + (scalar.style == .plain ? 0 : 1)
            }
            throw PolicyError(file: file, line: templateNode?.mark?.line ?? node.mark?.line ?? 0, column: column,
                              reason: "the name template \"\(template)\": \(error.reason)")
        }
    }

    func stores(_ node: Node) throws(PolicyError) -> StoreWatchPolicy {
        var result = StoreWatchPolicy()
        for (key, _, value) in try mapping(node, "stores", allowed: ["watch", "threshold", "grow-by", "max-size", "interval"]) {
            switch key {
            case "watch":
                result.enabled = try bool(value, "watch")
            case "threshold":
                let text = try string(value, "threshold")
                let fraction: Double?
                if text.hasSuffix("%") {
                    fraction = Double(text.dropLast()).map { $0 / 100 }
                } else {
                    fraction = Double(text)
                }
                guard let fraction, fraction > 0, fraction < 1 else {
                    throw error(value, "threshold \"\(text)\" must be a share of the store between 0 and 100%, e.g. 80%")
                }
                result.threshold = fraction
            case "grow-by":
                if try string(value, "grow-by") == "double" {
                    result.step = nil
                } else {
                    let step = try size(value, "grow-by")
                    guard step > .zero else { throw error(value, "grow-by must be more than 0, or double") }
                    result.step = step
                }
            case "max-size":
                result.limit = try size(value, "max-size")
            default:
                result.pollInterval = try duration(value, "interval")
            }
        }
        return result
    }

    func metrics(_ node: Node) throws(PolicyError) -> MetricsPolicy {
        var result = MetricsPolicy()
        for (key, _, value) in try mapping(node, "metrics", allowed: ["file", "interval"]) {
            switch key {
            case "file":
                let path = try string(value, "the metrics file")
                guard path.hasPrefix("/") else {
                    throw error(value, "the metrics file \"\(path)\" must be an absolute path, e.g. /var/lib/prometheus/node-exporter/snapstack.prom")
                }
                guard path.hasSuffix(".prom"), !path.hasSuffix("/.prom") else {
                    throw error(value, "the metrics file \"\(path)\" must be named *.prom: node_exporter's textfile collector reads no other file")
                }
                result.file = path
            default:
                result.interval = try duration(value, "interval")
            }
        }
        return result
    }
}
