import BlockIO
import Snapstack

/// LVM on the simulated kernel: a volume is a disk at `/dev/<group>/<name>` that a table can
/// hold open; a held volume cannot be removed, as LVM refuses to remove an open one.
extension SimulatedKernel: LogicalVolumes {
    public func volumeGroup(named name: String) throws -> VolumeGroupFacts? {
        state.withLock { state in
            state.volumeGroups[name].map {
                VolumeGroupFacts(name: name, extentSize: $0.extentSize, free: $0.free, physicalVolumes: $0.physicalVolumes)
            }
        }
    }

    public func volumes(tagged tag: String) throws -> [LogicalVolumeFacts] {
        state.withLock { state in
            state.volumeGroups.flatMap { group, vg in
                vg.volumes.filter { $0.value.tags.contains(tag) }.map { name, volume in
                    let number = state.disks["/dev/\(group)/\(name)"]?.number
                    return LogicalVolumeFacts(group: group, name: name, size: volume.size, tags: volume.tags,
                                              open: number.map { state.holders(of: $0) > 0 } ?? false, number: number)
                }
            }.sorted { $0.fullName < $1.fullName }
        }
    }

    public func createVolume(group: String, name: String, size: Bytes, tag: String) throws {
        try change("lvcreate \(group)/\(name)")
        try state.withLock { state in
            guard var vg = state.volumeGroups[group], vg.volumes[name] == nil else {
                throw SimulatedFault(operation: "lvcreate \(group)/\(name): no such group, or the volume exists")
            }
            let extents = (size.rawValue + vg.extentSize.rawValue - 1) / vg.extentSize.rawValue * vg.extentSize.rawValue
            guard extents <= vg.free.rawValue else { throw SimulatedFault(operation: "lvcreate \(group)/\(name): insufficient free space") }
            vg.volumes[name] = ([tag], Bytes(extents))
            state.volumeGroups[group] = vg
            state.nextVolumeMinor += 1
            let number = DeviceNumber(major: 254, minor: state.nextVolumeMinor)
            state.disks["/dev/\(group)/\(name)"] = Disk(number: number, size: Bytes(extents), identity: DeviceIdentity(serial: nil, size: Bytes(extents)))
        }
    }

    public func extendVolume(group: String, name: String, to size: Bytes) throws -> Bytes {
        try change("lvextend \(group)/\(name)")
        return try state.withLock { state in
            guard var vg = state.volumeGroups[group], let volume = vg.volumes[name] else {
                throw SimulatedFault(operation: "lvextend \(group)/\(name): no such volume")
            }
            guard volume.size < size else { return volume.size }
            let extents = (size.rawValue + vg.extentSize.rawValue - 1) / vg.extentSize.rawValue * vg.extentSize.rawValue
            guard extents - volume.size.rawValue <= vg.free.rawValue else {
                throw SimulatedFault(operation: "lvextend \(group)/\(name): insufficient free space")
            }
            vg.volumes[name]?.size = Bytes(extents)
            state.volumeGroups[group] = vg
            state.disks["/dev/\(group)/\(name)"]?.size = Bytes(extents)
            return Bytes(extents)
        }
    }

    /// Volumes are active from their creation on, also across a simulated reboot.
    public func activateVolume(group: String, name: String) throws {
        guard state.withLock({ $0.volumeGroups[group]?.volumes[name] != nil }) else {
            throw SimulatedFault(operation: "lvchange -ay \(group)/\(name): no such volume")
        }
    }

    public func removeVolume(group: String, name: String) throws {
        guard state.withLock({ $0.volumeGroups[group]?.volumes[name] != nil }) else { return }
        try change("lvremove \(group)/\(name)")
        try state.withLock { state in
            if let number = state.disks["/dev/\(group)/\(name)"]?.number, state.holders(of: number) > 0 {
                throw SimulatedFault(operation: "lvremove \(group)/\(name): in use")
            }
            state.volumeGroups[group]?.volumes[name] = nil
            state.disks["/dev/\(group)/\(name)"] = nil
        }
    }
}
