/// The auto-protect rules compiled into udev rules, so that a disk the policy will protect is
/// hidden from mounters (systemd, udisks) from its first udev event on, instead of from the
/// moment its stack exists: udisks may mount a plugged disk within milliseconds, before the
/// daemon has even read the event.
///
/// The compiled file only tags the device (`SNAPSTACK_POLICY=<rule>`); 61-snapstack.rules,
/// which runs after it, hides a tagged device as it hides the disk under a stack. The daemon
/// then decides as always, from the device's properties (`Policy.decision`): it protects the
/// device — its member marker keeps it hidden — or releases it (a marker under
/// `releasedDirectory`, then a `change` event), so nothing stays hidden that is not protected.
///
/// What udev cannot express is widened, never narrowed: a size bound is left out of a `protect`
/// rule (it hides a few devices the daemon then releases), and an `exclude` rule with a size
/// bound or a pattern udev would read otherwise is left out altogether (the devices it excludes
/// may be hidden, then released). So every device the policy protects is hidden; a device it
/// does not protect is at most hidden until the daemon has looked at it.
///
/// Only a real hotplug is tagged: a kernel `add` event. A synthetic one (`udevadm trigger`,
/// coldplug; the kernel sets `SYNTH_UUID`) may concern a disk in use, and a mounted filesystem
/// whose device turns `SYSTEMD_READY=0` is unmounted by systemd. Later events of a tagged
/// device keep the tag (from udev's database) until the device is released.
extension Policy {
    /// Where the daemon writes the compiled rules: a tmpfs, so that they exist only while the
    /// daemon runs (it removes them when it stops) and never outlive the boot. The name sorts
    /// before 61-snapstack.rules ("-" before "."), which reads the tag.
    public static let udevRulesPath = "/run/udev/rules.d/61-snapstack-policy.rules"

    /// The property the compiled rules set on a device they hide: the number of the rule that
    /// matched it.
    public static let udevTag = "SNAPSTACK_POLICY"

    /// The udev rules file for this policy. A device whose `major:minor` names a file in
    /// `releasedDirectory` (an absolute path of the daemon's, plain characters) is never
    /// tagged: the daemon looked at it and left it alone.
    public func udevRules(releasedDirectory: String) -> String {
        var lines = [
            "# Written by snapstack's daemon from \(file.isEmpty ? "its policy" : file) while it runs; do not edit.",
            "# A disk an auto-protect rule matches is hidden (61-snapstack.rules) from its first event",
            "# until snapstack has stacked it or released it.",
            "SUBSYSTEM!=\"block\", GOTO=\"snapstack_policy_end\"",
            "ACTION==\"remove\", GOTO=\"snapstack_policy_end\"",
            // Device-mapper devices get their content at a later change; stacks and LVM volumes
            // are not hotplugged disks.
            "KERNEL==\"dm-*\", GOTO=\"snapstack_policy_end\"",
            "TEST==\"\(releasedDirectory)/$major:$minor\", GOTO=\"snapstack_policy_end\"",
            "ACTION!=\"add\", IMPORT{db}=\"\(Self.udevTag)\", GOTO=\"snapstack_policy_end\"",
            "ENV{SYNTH_UUID}==\"?*\", GOTO=\"snapstack_policy_end\"",
        ]
        for (index, rule) in rules.enumerated() {
            let reference = RuleReference(index: index + 1, label: rule.label, line: rule.line)
            lines.append("")
            let label = " " + Self.commentText(reference.description)
            switch rule.action {
            case .exclude:
                let conditions = rule.properties.compactMap(Self.condition)
                guard rule.minimumSize == nil, rule.maximumSize == nil, conditions.count == rule.properties.count else {
                    lines.append("#\(label): exclude, left out (a size or a pattern udev cannot test): what it excludes may be hidden until released")
                    continue
                }
                lines.append("#\(label): exclude")
                lines.append((conditions + ["GOTO=\"snapstack_policy_end\""]).joined(separator: ", "))
            case .protect:
                var note = ""
                if rule.minimumSize != nil || rule.maximumSize != nil { note = " (its size bounds are not tested here)" }
                let conditions = rule.properties.compactMap(Self.condition)
                if conditions.count < rule.properties.count { note += " (a pattern udev cannot test is left out)" }
                lines.append("#\(label): protect\(note)")
                lines.append((conditions + ["ENV{\(Self.udevTag)}=\"\(index + 1)\"", "GOTO=\"snapstack_policy_end\""])
                    .joined(separator: ", "))
            }
        }
        lines += ["", "LABEL=\"snapstack_policy_end\"", ""]
        return lines.joined(separator: "\n")
    }

    /// The properties the policy decides on, as udev gave them before snapstack's own rules
    /// hid the device: the filesystem type they replaced (`ID_FS_TYPE=snapstack_member`) comes
    /// back, and what they added goes.
    public static func propertiesBeforeHiding(_ properties: [String: String]) -> [String: String] {
        guard properties["SNAPSTACK_MEMBER"] == "1" || properties[udevTag] != nil else { return properties }
        var original = properties
        if original["ID_FS_TYPE"] == "snapstack_member" { original["ID_FS_TYPE"] = original["SNAPSTACK_ID_FS_TYPE"] ?? "" }
        for key in ["SNAPSTACK_MEMBER", "SNAPSTACK_ID_FS_TYPE", udevTag, "SYSTEMD_READY", "UDISKS_IGNORE"] {
            original[key] = nil
        }
        return original
    }

    /// One property test in udev's syntax, or nil when udev would not read the patterns as the
    /// policy does: udev splits a pattern at `|` (its own "any of"), substitutes `$` and `%`,
    /// and has no escape for `"` or a backslash in a quoted value; an empty pattern among
    /// others has no spelling.
    static func condition(_ match: PropertyMatch) -> String? {
        let patterns = match.globs.map(\.pattern)
        guard !patterns.isEmpty, patterns.allSatisfy({ pattern in
            pattern.unicodeScalars.allSatisfy { $0.value >= 0x20 && $0.value != 0x7f && !"|$%\"\\".unicodeScalars.contains($0) }
        }) else { return nil }
        if patterns.contains("") && patterns.count > 1 { return nil }
        let key = match.property == "KERNEL" ? "KERNEL" : "ENV{\(match.property)}"
        return "\(key)==\"\(patterns.joined(separator: "|"))\""
    }

    /// `text` on one comment line: a rule's label may hold any character, a line break too.
    static func commentText(_ text: String) -> String {
        String(String.UnicodeScalarView(text.unicodeScalars.map { $0.value >= 0x20 && $0.value != 0x7f ? $0 : "?" }))
    }
}
