import BlockIO
import SnapstackErrors
import SystemPackage

extension VolumeGroupFacts {
    /// `size` in whole extents, as LVM allocates a volume; saturates past `UInt64.max`.
    func allocation(for size: Bytes) -> Bytes {
        let extent = max(extentSize.rawValue, 1)
        let (sum, overflow) = size.rawValue.addingReportingOverflow(extent - 1)
        return Bytes(overflow ? .max : sum / extent * extent)
    }
}

extension Orchestrator {
    /// A volume group for volumes of snapstack's own (snapshot stores, era metadata): LVM
    /// knows it, and none of its physical volumes lies on `devices` — what snapstack writes
    /// there would pass through the very devices it serves. `what` names the use in messages
    /// ("the store"); `otherwise` is the alternative a remedy offers.
    func volumeGroup(_ name: String, for what: String, avoiding devices: Set<DeviceNumber>, otherwise: String) throws -> VolumeGroupFacts {
        guard LVMNames.isValid(name) else {
            throw SnapstackError(.invalidArgument, "\"\(name.replacingNewlines)\" is not a volume group name",
                                 why: "LVM allows letters, digits and + _ . - (not first), at most 127",
                                 remedy: "name a volume group that `vgs` lists, or \(otherwise)")
        }
        var found: VolumeGroupFacts?
        try failing("cannot read the volume group \(name)") { found = try volumes.volumeGroup(named: name) }
        guard let group = found else {
            throw SnapstackError(.notFound, "no volume group \(name)", why: "LVM knows no volume group of that name",
                                 remedy: "name one that `vgs` lists, or \(otherwise)")
        }
        for pv in group.physicalVolumes {
            guard let number = try? host.facts(of: FilePath(pv)).number else { continue }
            if !host.underlyingDevices(of: number).isDisjoint(with: devices) {
                throw SnapstackError(.refused, "the volume group \(name) for \(what) is on a device it would serve (\(pv))",
                                     why: "what snapstack writes there would pass through that device",
                                     remedy: "use a volume group on another disk, or \(otherwise)")
            }
        }
        return group
    }

    /// The node of one of snapstack's volumes, activated first if it is not active: after a
    /// boot, LVM's event activation may not have reached its group yet, or may skip it.
    func activeVolumePath(group: String, name: String) throws -> String {
        let path = "/dev/\(group)/\(name)"
        if (try? host.facts(of: FilePath(path))) == nil {
            try failing("cannot activate \(group)/\(name)") { try volumes.activateVolume(group: group, name: name) }
        }
        return path
    }
}
