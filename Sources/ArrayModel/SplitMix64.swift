// The one seeded generator of the fault paths (injected drive faults, bit rot, torn power cuts): SplitMix64, whose
// every output follows from the seed alone, so a run that printed its seed can be replayed.
public enum SplitMix64 {
    public static func next(_ state: inout UInt64) -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
