import DeviceMapper

/// Deterministic device-mapper names and UUIDs of a protected device's stack.
///
/// Names are for people (`/dev/mapper/snapstack-data`); UUIDs are how snapstack recognises its own
/// devices after a restart: `SNAPSTACK-1-<device id>-<layer>`, with a format version so that a
/// later layout can be told apart from this one.
public enum Layout {
    public static let namePrefix = "snapstack-"
    public static let uuidPrefix = "SNAPSTACK-1-"
    /// Longest device name: leaves room for the prefix, a dash and a snapshot name in 127 bytes.
    public static let maxDeviceName = 64
    public static let maxSnapshotName = 48
    /// Snapshot names that would collide with a layer's name.
    public static let reservedSnapshotNames: Set<String> = ["real", "cbt", "top", "cow", "clone"]

    public enum Layer: Equatable, Sendable {
        /// What the filesystem mounts: `linear` over `real`, or `snapshot-origin` while snapshots exist.
        case top
        /// The hidden layer over the disk: `era` with change tracking, `linear` without.
        case real
        /// Under `real` of an adopted live device: the table that device had (`Adoption`).
        case clone
        case snapshot(id: String)

        var uuidSuffix: String {
            switch self {
            case .top: "top"
            case .real: "real"
            case .clone: "clone"
            case .snapshot(let id): "snap-\(id)"
            }
        }
    }

    public static func topName(_ device: String) throws -> DMName { try DMName(namePrefix + device) }
    public static func realName(_ device: String) throws -> DMName { try DMName(namePrefix + device + "-real") }
    public static func cloneName(_ device: String) throws -> DMName { try DMName(namePrefix + device + "-clone") }
    public static func snapshotName(_ device: String, _ snapshot: String) throws -> DMName {
        try DMName(namePrefix + device + "-" + snapshot)
    }

    public static func uuid(deviceID: String, _ layer: Layer) throws -> DMUUID {
        try DMUUID(uuidPrefix + deviceID + "-" + layer.uuidSuffix)
    }

    /// Reads a UUID of ours back into its device id and layer; nil for anything else.
    public static func parse(uuid: String) -> (deviceID: String, layer: Layer)? {
        guard uuid.hasPrefix(uuidPrefix) else { return nil }
        let rest = uuid.dropFirst(uuidPrefix.count)
        guard let dash = rest.firstIndex(of: "-") else { return nil }
        let id = String(rest[..<dash])
        let layer = rest[rest.index(after: dash)...]
        switch layer {
        case "top": return (id, .top)
        case "real": return (id, .real)
        case "clone": return (id, .clone)
        case _ where layer.hasPrefix("snap-") && layer.count > 5:
            return (id, .snapshot(id: String(layer.dropFirst(5))))
        default: return nil
        }
    }
}
