import BlockIO

/// The daemon's configuration file (`/etc/snapstack/snapstack.conf`, YAML): the auto-protect
/// rules applied to block devices as they appear, and the settings of the snapshot-store watch.
///
/// Rules are tried in the order written; the first whose `match` fits the device decides:
/// `protect` it (with a name made from its udev properties) or `exclude` it. A device no rule
/// matches is left alone, so a file without rules protects nothing.
public struct Policy: Sendable, Equatable {
    public static let defaultPath = "/etc/snapstack/snapstack.conf"

    public var rules: [Rule]
    public var stores: StoreWatchPolicy
    public var metrics: MetricsPolicy
    /// The file the policy was read from, for log lines.
    public var file: String

    public init(rules: [Rule] = [], stores: StoreWatchPolicy = StoreWatchPolicy(), metrics: MetricsPolicy = MetricsPolicy(),
                file: String = "") {
        self.rules = rules
        self.stores = stores
        self.metrics = metrics
        self.file = file
    }

    /// The policy in force when there is no configuration file: no rules, default store watch.
    public static let empty = Policy()

    /// What the first matching rule says about a device with these udev `properties` and `size`.
    public func decision(properties: [String: String], size: Bytes) -> Decision {
        for (index, rule) in rules.enumerated() where rule.matches(properties: properties, size: size) {
            let reference = RuleReference(index: index + 1, label: rule.label, line: rule.line)
            switch rule.action {
            case .exclude:
                return .exclude(rule: reference)
            case .protect(let action):
                return .protect(name: action.name.expand(properties), cbtBlock: action.cbtBlock, rule: reference)
            }
        }
        return .noMatch
    }

    /// What a policy decided for one device.
    public enum Decision: Sendable, Equatable {
        /// Protect the device as `name` (already expanded and made a valid device name; empty
        /// when the template gave nothing), with change tracking at `cbtBlock` (zero: as the
        /// device's size asks), or none when nil.
        case protect(name: String, cbtBlock: Bytes?, rule: RuleReference)
        case exclude(rule: RuleReference)
        case noMatch
    }
}

/// Which rule decided, for log lines: `rule 2 "usb-backup" (line 14)`.
public struct RuleReference: Sendable, Equatable, CustomStringConvertible {
    /// 1-based position in the file.
    public var index: Int
    public var label: String?
    public var line: Int
    public var description: String {
        "rule \(index)" + (label.map { " \"\($0)\"" } ?? "") + " (line \(line))"
    }
}

/// One auto-protect rule.
public struct Rule: Sendable, Equatable {
    public enum Action: Sendable, Equatable {
        case protect(ProtectAction)
        case exclude
    }

    /// The rule's `name`, shown in logs.
    public var label: String?
    /// The line the rule starts on.
    public var line: Int
    /// Every one must hold (an empty list matches every device).
    public var properties: [PropertyMatch]
    public var minimumSize: Bytes?
    public var maximumSize: Bytes?
    public var action: Action

    public init(label: String? = nil, line: Int = 0, properties: [PropertyMatch] = [], minimumSize: Bytes? = nil,
                maximumSize: Bytes? = nil, action: Action) {
        self.label = label
        self.line = line
        self.properties = properties
        self.minimumSize = minimumSize
        self.maximumSize = maximumSize
        self.action = action
    }

    public func matches(properties values: [String: String], size: Bytes) -> Bool {
        if let minimumSize, size < minimumSize { return false }
        if let maximumSize, size > maximumSize { return false }
        return properties.allSatisfy { $0.matches(values) }
    }
}

/// `PROPERTY: glob` or `PROPERTY: [glob, glob]`: the udev property's value must match one of
/// the globs (fnmatch(3), as udev's own rules match). A property the device lacks counts as
/// the empty string, so `""` matches "none" and `"?*"` means "any value".
public struct PropertyMatch: Sendable, Equatable {
    public var property: String
    public var globs: [Glob]

    public init(property: String, globs: [Glob]) {
        self.property = property
        self.globs = globs
    }

    public func matches(_ values: [String: String]) -> Bool {
        let value = values[property] ?? ""
        return globs.contains { $0.matches(value) }
    }
}

/// What `protect:` asks for.
public struct ProtectAction: Sendable, Equatable {
    public static let defaultNameTemplate = "${ID_SERIAL:-${KERNEL}}${ID_PART_ENTRY_NUMBER:+-part${ID_PART_ENTRY_NUMBER}}"
    /// `cbt-block: auto`, the default: the block follows the device's size, as `snapstack protect`
    /// chooses it (zero bytes stands for it, as in the library's `ProtectOptions`).
    public static let automaticCBTBlock = Bytes.zero
    public static let defaultCBTBlock = automaticCBTBlock

    public var name: NameTemplate
    /// The change-tracking block; `automaticCBTBlock` lets the device's size choose; nil
    /// protects without change tracking (`no-cbt: true`).
    public var cbtBlock: Bytes?

    public init(name: NameTemplate, cbtBlock: Bytes? = ProtectAction.defaultCBTBlock) {
        self.name = name
        self.cbtBlock = cbtBlock
    }
}

/// The `stores:` section: when and how the daemon grows snapshot stores before they fill up.
public struct StoreWatchPolicy: Sendable, Equatable {
    /// `watch:`; false leaves stores as they were created.
    public var enabled: Bool = true
    /// `threshold:` as a fraction of the store in use (written `80%` or `0.8`).
    public var threshold: Double = 0.8
    /// `grow-by:`, a size; nil (`double`) doubles the store each time.
    public var step: Bytes? = nil
    /// `max-size:`, the size no store is grown beyond; nil: no limit but the free space.
    public var limit: Bytes? = nil
    /// `interval:`, how often the stores' use is read.
    public var pollInterval: Duration = .seconds(5)

    public init() {}
}

/// The `metrics:` section: where the daemon writes its metrics for node_exporter's textfile
/// collector, and how often. Off unless `file` is given.
public struct MetricsPolicy: Sendable, Equatable {
    /// `file:`, an absolute path ending in `.prom` (the collector reads no other name); nil:
    /// no metrics file.
    public var file: String? = nil
    /// `interval:`, how often the file is rewritten when nothing happens; it is also rewritten
    /// after every operation of the daemon.
    public var interval: Duration = .seconds(30)

    public init(file: String? = nil, interval: Duration = .seconds(30)) {
        self.file = file
        self.interval = interval
    }
}
