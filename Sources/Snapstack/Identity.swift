import BlockIO
import Images
internal import StateDatabase
import Udev

/// What finds a protected disk again after a reboot or a rename: the stable names udev reads
/// from the hardware and the partition table, and the size.
public struct DeviceIdentity: Equatable, Sendable {
    public var wwn: String?
    public var serial: String?
    /// `ID_PART_ENTRY_NUMBER`: a partition's WWN and serial are its disk's, so they identify
    /// a partition only together with its number.
    public var partitionNumber: String?
    public var partUUID: String?
    public var fsUUID: String?
    public var size: Bytes

    /// True when nothing but the size is known (a loop device or a bare virtual disk): such a
    /// device is found again only at its old device number.
    public var isAnonymous: Bool { wwn == nil && serial == nil && partUUID == nil && fsUUID == nil }

    public init(wwn: String? = nil, serial: String? = nil, partitionNumber: String? = nil,
                partUUID: String? = nil, fsUUID: String? = nil, size: Bytes) {
        self.wwn = wwn
        self.serial = serial
        self.partitionNumber = partitionNumber
        self.partUUID = partUUID
        self.fsUUID = fsUUID
        self.size = size
    }

    public init(udev device: UdevDevice, size: Bytes) {
        func value(_ key: String) -> String? { device[key].flatMap { $0.isEmpty ? nil : $0 } }
        self.init(wwn: value("ID_WWN_WITH_EXTENSION") ?? value("ID_WWN"), serial: value("ID_SERIAL"),
                  partitionNumber: value("ID_PART_ENTRY_NUMBER"), partUUID: value("ID_PART_ENTRY_UUID"),
                  fsUUID: value("ID_FS_UUID"), size: size)
    }

    /// Whether `candidate` is the same device: same size, and the strongest identifier both
    /// have agrees (PARTUUID, then WWN or serial with the partition number, then filesystem UUID).
    public func matches(_ candidate: DeviceIdentity) -> Bool {
        guard size == candidate.size else { return false }
        if let a = partUUID, let b = candidate.partUUID { return a.lowercased() == b.lowercased() }
        if let a = wwn, let b = candidate.wwn { return a == b && partitionNumber == candidate.partitionNumber }
        if let a = serial, let b = candidate.serial { return a == b && partitionNumber == candidate.partitionNumber }
        if let a = fsUUID, let b = candidate.fsUUID { return a == b }
        return false
    }
}

extension ImageManifest.Device {
    /// True when this image was taken of `device`'s disk: the same protection, or the same name
    /// with at least one stable identifier (WWN, serial, PARTUUID, filesystem UUID) in common and
    /// none that differs — as after the disk was unprotected and protected again.
    func isSameDisk(as device: DeviceRecord) -> Bool {
        if id == device.id { return true }
        guard name == device.name else { return false }
        let pairs = [(wwn, device.wwn), (serial, device.serial), (partUUID, device.partUUID), (fsUUID, device.fsUUID)]
            .compactMap { mine, theirs in mine.flatMap { a in theirs.map { (a, $0) } } }
        return !pairs.isEmpty && pairs.allSatisfy { $0 == $1 }
    }
}
