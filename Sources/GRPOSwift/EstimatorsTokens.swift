// Token-level advantage estimators: REINFORCE++ (discounted returns, whitened over the batch's
// kept tokens) and REINFORCE++-baseline (group-mean baseline, whitened likewise). See the maths
// in Estimators.swift.

extension Estimators {
    /// Rows per chunk of the token-level passes: about 16 Ki tokens, fixed for given `cols`.
    static func tokenRowsPerChunk(_ cols: Int) -> Int { Swift.max(1, (1 << 14) / Swift.max(cols, 1)) }

    /// Token-level advantages, (rows, cols) row-major.
    ///
    /// rewards: (rows) outcome rewards, placed on each row's last kept token (rewardCols == 1),
    ///          or (rows, cols) token rewards (rewardCols == cols; reinforce_pp only).
    ///          NaN marks an unscorable row (for token rewards: a NaN at a kept position).
    /// mask:    (rows, cols), nonzero = kept token.
    /// groups:  required by reinforce_pp_baseline, ignored by reinforce_pp.
    /// returns: reinforce_pp only (nil otherwise): the un-whitened discounted returns R_t
    ///          (verl's second output), 0 at masked positions and on unscorable rows.
    /// Masked-out positions and unscorable rows get 0; so does every advantage when fewer than
    /// 2 tokens enter the whitening (its variance is undefined).
    public static func tokenAdvantages<T: BinaryFloatingPoint>(
        rewards: UnsafeBufferPointer<T>, rewardCols: Int, rows: Int, cols: Int,
        mask: UnsafeBufferPointer<UInt8>, groups: RowGroups?, ids: UnsafeBufferPointer<Int64>? = nil,
        config: EstimatorConfig, advantages: UnsafeMutableBufferPointer<T>,
        returns: UnsafeMutableBufferPointer<T>? = nil
    ) throws(GRPOError) {
        try config.validate()
        guard config.estimator.isTokenLevel else {
            throw GRPOError(.value, "\(config.estimator.name) is a per-row estimator: use the per-row entry point")
        }
        guard rows > 0 else { throw GRPOError(.shape, "rewards must have at least one row, got \(rows)") }
        guard cols > 0 else { throw GRPOError(.shape, "response_mask must have at least one column, got \(cols)") }
        let total = try checkedProduct(rows, cols, what: "response_mask")
        guard rewardCols == 1 || (rewardCols == cols && config.estimator == .reinforcePP) else {
            throw GRPOError(.shape, config.estimator == .reinforcePP
                ? "rewards must have 1 (outcome) or \(cols) (token-level) columns, got \(rewardCols)"
                : "reinforce_pp_baseline takes one outcome reward per row, got \(rewardCols) columns")
        }
        let rewardCount = try checkedProduct(rows, rewardCols, what: "rewards")
        guard rewards.count >= rewardCount else {
            throw GRPOError(.shape, "rewards holds \(rewards.count) elements, expected \(rewardCount)")
        }
        guard mask.count >= total else { throw GRPOError(.shape, "response_mask holds \(mask.count) elements, expected \(total)") }
        guard advantages.count >= total else { throw GRPOError(.shape, "advantages must hold \(total) elements") }
        if let returns {
            guard config.estimator == .reinforcePP else {
                throw GRPOError(.value, "returns are computed by reinforce_pp only (reinforce_pp_baseline's returns are its advantages)")
            }
            guard returns.count >= total else { throw GRPOError(.shape, "returns must hold \(total) elements") }
        }
        let rw = UnsafeBufferPointer(rebasing: rewards[0..<rewardCount])
        if config.estimator == .reinforcePP {
            // Only rewards that are used are data: token rewards at kept tokens, outcome rewards of
            // rows with a kept token. Masked positions may hold anything (they are never read).
            for i in 0..<rows {
                for t in 0..<cols where mask[i * cols + t] != 0 {
                    let j = rewardCols == 1 ? i : i * cols + t
                    if rw[j].isInfinite {
                        throw GRPOError(.value, "rewards must be finite or NaN (missing) where response_mask is 1, "
                                        + "got \(Double(rw[j])) at row \(i)" + (rewardCols == 1 ? "" : ", token \(t)"))
                    }
                    if rewardCols == 1 { break }
                }
            }
        } else {
            try checkFinite(rw, "rewards")  // every row's outcome enters its group's baseline
        }

        if config.estimator == .reinforcePP {
            try reinforcePP(rw, rewardCols, rows, cols, mask, config, advantages, returns)
            return
        }
        guard let groups else { throw GRPOError(.null, "reinforce_pp_baseline needs groups (group_ids or num_generations)") }
        guard groups.rows == rows else {
            throw GRPOError(.shape, "groups cover \(groups.rows) rows, rewards have \(rows)")
        }
        try reinforcePPBaseline(rw, rows, cols, mask, groups, ids, config, advantages)
    }

    static func reinforcePP<T: BinaryFloatingPoint>(
        _ rewards: UnsafeBufferPointer<T>, _ rewardCols: Int, _ rows: Int, _ cols: Int,
        _ mask: UnsafeBufferPointer<UInt8>, _ config: EstimatorConfig,
        _ advantages: UnsafeMutableBufferPointer<T>, _ returns: UnsafeMutableBufferPointer<T>?
    ) throws(GRPOError) {
        let gamma = config.gamma
        let reset = config.maskedReturns == .reset
        let chunk = tokenRowsPerChunk(cols)
        let chunks = (rows + chunk - 1) / chunk
        // Returns in Double; NaN marks tokens that do not enter the whitening.
        var ret = [Double](repeating: .nan, count: rows * cols)
        var sums = [Double](repeating: 0, count: chunks), counts = [Int](repeating: 0, count: chunks)
        var los = [Double](repeating: .infinity, count: chunks), his = [Double](repeating: -.infinity, count: chunks)
        var sqs = [Double](repeating: 0, count: chunks)
        try ret.withUnsafeMutableBufferPointer { (ret) throws(GRPOError) in
            try sums.withUnsafeMutableBufferPointer { (sums) throws(GRPOError) in
            try counts.withUnsafeMutableBufferPointer { (counts) throws(GRPOError) in
            try los.withUnsafeMutableBufferPointer { (los) throws(GRPOError) in
            try his.withUnsafeMutableBufferPointer { (his) throws(GRPOError) in
                try Parallel.forEachChunk(count: rows, chunkSize: chunk) { c, range in
                    var s = 0.0, k = 0, lo = Double.infinity, hi = -Double.infinity
                    for i in range {
                        let base = i * cols
                        var last = -1
                        for t in 0..<cols where mask[base + t] != 0 { last = t }
                        if last < 0 { continue }
                        var scorable = true
                        if rewardCols == 1 {
                            scorable = !Double(rewards[i]).isNaN
                        } else {
                            for t in 0..<cols where mask[base + t] != 0 && Double(rewards[base + t]).isNaN {
                                scorable = false
                                break
                            }
                        }
                        if !scorable { continue }
                        var running = 0.0
                        for t in stride(from: last, through: 0, by: -1) {
                            if mask[base + t] == 0 {
                                if reset { running = 0 }
                                continue
                            }
                            let r = rewardCols == 1 ? (t == last ? Double(rewards[i]) : 0) : Double(rewards[base + t])
                            running = r + gamma * running
                            ret[base + t] = running
                            s += running; k += 1
                            lo = Swift.min(lo, running); hi = Swift.max(hi, running)
                        }
                    }
                    sums[c] = s; counts[c] = k; los[c] = lo; his[c] = hi
                }
            }}}}
        }
        if let returns {
            try ret.withUnsafeBufferPointer { (ret) throws(GRPOError) in
                try Parallel.forEachChunk(count: rows, chunkSize: chunk) { _, range in
                    for j in (range.lowerBound * cols)..<(range.upperBound * cols) {
                        returns[j] = ret[j].isNaN ? 0 : T(ret[j])
                    }
                }
            }
        }
        let count = counts.reduce(0, +)
        guard count >= 2 else {
            for i in 0..<(rows * cols) { advantages[i] = 0 }
            return
        }
        var mean = sums.reduce(0, +) / Double(count)
        mean = Swift.min(Swift.max(mean, los.min() ?? mean), his.max() ?? mean)
        try ret.withUnsafeBufferPointer { (ret) throws(GRPOError) in
            try sqs.withUnsafeMutableBufferPointer { (sqs) throws(GRPOError) in
                try Parallel.forEachChunk(count: rows, chunkSize: chunk) { c, range in
                    var ss = 0.0
                    for j in (range.lowerBound * cols)..<(range.upperBound * cols) where !ret[j].isNaN {
                        let d = ret[j] - mean
                        ss += d * d
                    }
                    sqs[c] = ss
                }
            }
        }
        let variance = sqs.reduce(0, +) / Double(count - 1)
        let scale = (variance + config.epsilon).squareRoot()
        try ret.withUnsafeBufferPointer { (ret) throws(GRPOError) in
            try Parallel.forEachChunk(count: rows, chunkSize: chunk) { _, range in
                for j in (range.lowerBound * cols)..<(range.upperBound * cols) {
                    let x = (ret[j] - mean) / scale
                    advantages[j] = x.isNaN ? 0 : T(x)
                }
            }
        }
    }

    static func reinforcePPBaseline<T: BinaryFloatingPoint>(
        _ rewards: UnsafeBufferPointer<T>, _ rows: Int, _ cols: Int, _ mask: UnsafeBufferPointer<UInt8>,
        _ groups: RowGroups, _ ids: UnsafeBufferPointer<Int64>?, _ config: EstimatorConfig,
        _ advantages: UnsafeMutableBufferPointer<T>
    ) throws(GRPOError) {
        let sc = scan(rewards, groups)
        try throwOnSingleton(sc, groups, ids, config)
        // Row-level centred rewards (NaN = excluded) and kept-token counts.
        var a0 = [Double](repeating: .nan, count: rows)
        var lengths = [Int](repeating: 0, count: rows)
        for i in 0..<rows {
            var l = 0
            for t in 0..<cols where mask[i * cols + t] != 0 { l += 1 }
            lengths[i] = l
        }
        a0.withUnsafeMutableBufferPointer { a0 in
            withMembers(groups) { member in
                for g in 0..<groups.count {
                    let k = sc.valid[g]
                    if k == 0 || (k == 1 && config.singleton == .zero) { continue }
                    let rows = member(g)
                    let mu = k == 1 ? 0 : nanMeanStd(count: rows.count) { Double(rewards[rows[$0]]) }.mean
                    for i in rows { a0[i] = Double(rewards[i]) - mu }
                }
            }
        }
        // Whitening over kept tokens: each row's value counts L_i times. Row order is fixed.
        var n = 0, sum = 0.0, lo = Double.infinity, hi = -Double.infinity
        for i in 0..<rows where !a0[i].isNaN && lengths[i] > 0 {
            n += lengths[i]
            sum += Double(lengths[i]) * a0[i]
            lo = Swift.min(lo, a0[i]); hi = Swift.max(hi, a0[i])
        }
        guard n >= 2 else {
            for j in 0..<(rows * cols) { advantages[j] = 0 }
            return
        }
        let mean = Swift.min(Swift.max(sum / Double(n), lo), hi)
        var ss = 0.0
        for i in 0..<rows where !a0[i].isNaN && lengths[i] > 0 {
            let d = a0[i] - mean
            ss += Double(lengths[i]) * d * d
        }
        let scale = (ss / Double(n - 1) + config.epsilon).squareRoot()
        try a0.withUnsafeBufferPointer { (a0) throws(GRPOError) in
            try Parallel.forEachChunk(count: rows, chunkSize: tokenRowsPerChunk(cols)) { _, range in
                for i in range {
                    let x = (a0[i] - mean) / scale
                    let v: T = x.isNaN ? 0 : T(x)
                    for t in 0..<cols { advantages[i * cols + t] = mask[i * cols + t] != 0 ? v : 0 }
                }
            }
        }
    }
}

// MARK: - Array conveniences for Swift callers

extension Estimators {
    /// Per-row advantages. `groupIDs` (one per row) or `numGenerations` (consecutive groups).
    public static func rowAdvantages<T: BinaryFloatingPoint>(
        rewards: [T], groupIDs: [Int64]? = nil, numGenerations: Int? = nil, lengths: [T]? = nil,
        config: EstimatorConfig
    ) throws(GRPOError) -> [T] {
        var out = [T](repeating: 0, count: rewards.count)
        let result: Result<Void, GRPOError> = rewards.withUnsafeBufferPointer { r in
            (groupIDs ?? []).withUnsafeBufferPointer { ids in
                (lengths ?? []).withUnsafeBufferPointer { l in
                    out.withUnsafeMutableBufferPointer { o in
                        Result { () throws(GRPOError) in
                            let groups = try makeGroups(rows: r.count, ids: groupIDs == nil ? nil : ids,
                                                        numGenerations: numGenerations)
                            try rowAdvantages(rewards: r, groups: groups, ids: groupIDs == nil ? nil : ids,
                                              lengths: lengths == nil ? nil : l, config: config, advantages: o)
                        }
                    }
                }
            }
        }
        try result.get()
        return out
    }

    /// Token-level advantages (rows, cols) row-major; `rewards` has rows or rows*cols elements.
    public static func tokenAdvantages<T: BinaryFloatingPoint>(
        rewards: [T], mask: [UInt8], rows: Int, cols: Int, groupIDs: [Int64]? = nil,
        numGenerations: Int? = nil, config: EstimatorConfig
    ) throws(GRPOError) -> [T] {
        try tokenArrays(rewards, mask, rows, cols, groupIDs, numGenerations, config, withReturns: false).advantages
    }

    /// REINFORCE++ token advantages and the un-whitened discounted returns (verl's pair), both
    /// (rows, cols) row-major.
    public static func reinforcePPAdvantagesAndReturns<T: BinaryFloatingPoint>(
        rewards: [T], mask: [UInt8], rows: Int, cols: Int, config: EstimatorConfig
    ) throws(GRPOError) -> (advantages: [T], returns: [T]) {
        try tokenArrays(rewards, mask, rows, cols, nil, nil, config, withReturns: true)
    }

    static func tokenArrays<T: BinaryFloatingPoint>(
        _ rewards: [T], _ mask: [UInt8], _ rows: Int, _ cols: Int, _ groupIDs: [Int64]?,
        _ numGenerations: Int?, _ config: EstimatorConfig, withReturns: Bool
    ) throws(GRPOError) -> (advantages: [T], returns: [T]) {
        let total = try checkedProduct(rows, cols, what: "response_mask")
        guard mask.count == total else { throw GRPOError(.shape, "mask.count (\(mask.count)) != rows*cols (\(total))") }
        guard rows > 0, rewards.count == rows || rewards.count == total else {
            throw GRPOError(.shape, "rewards.count (\(rewards.count)) must be rows (\(rows)) or rows*cols (\(total))")
        }
        var out = [T](repeating: 0, count: total)
        var ret = [T](repeating: 0, count: withReturns ? total : 0)
        let result: Result<Void, GRPOError> = rewards.withUnsafeBufferPointer { r in
            (groupIDs ?? []).withUnsafeBufferPointer { ids in
                mask.withUnsafeBufferPointer { m in
                    out.withUnsafeMutableBufferPointer { o in
                        ret.withUnsafeMutableBufferPointer { rt in
                            Result { () throws(GRPOError) in
                                var groups: RowGroups? = nil
                                if config.estimator == .reinforcePPBaseline {
                                    groups = try makeGroups(rows: rows, ids: groupIDs == nil ? nil : ids,
                                                            numGenerations: numGenerations)
                                }
                                try tokenAdvantages(
                                    rewards: r, rewardCols: r.count == rows ? 1 : cols, rows: rows, cols: cols,
                                    mask: m, groups: groups, ids: groupIDs == nil ? nil : ids, config: config,
                                    advantages: o, returns: withReturns ? rt : nil)
                            }
                        }
                    }
                }
            }
        }
        try result.get()
        return (out, ret)
    }

    /// Zero-spread flags (see zeroSpread(rewards:groups:tolerance:out:)).
    public static func zeroSpread<T: BinaryFloatingPoint>(
        rewards: [T], groupIDs: [Int64]? = nil, numGenerations: Int? = nil, tolerance: Double = 0
    ) throws(GRPOError) -> [Bool] {
        var out = [UInt8](repeating: 0, count: rewards.count)
        let result: Result<Void, GRPOError> = rewards.withUnsafeBufferPointer { r in
            (groupIDs ?? []).withUnsafeBufferPointer { ids in
                out.withUnsafeMutableBufferPointer { o in
                    Result { () throws(GRPOError) in
                        let groups = try makeGroups(rows: r.count, ids: groupIDs == nil ? nil : ids,
                                                    numGenerations: numGenerations)
                        try zeroSpread(rewards: r, groups: groups, tolerance: tolerance, out: o)
                    }
                }
            }
        }
        try result.get()
        return out.map { $0 != 0 }
    }

    /// Exactly one of `ids` / `numGenerations` describes the groups.
    public static func makeGroups(rows: Int, ids: UnsafeBufferPointer<Int64>?, numGenerations: Int?)
        throws(GRPOError) -> RowGroups
    {
        switch (ids, numGenerations) {
        case (let ids?, nil): return try RowGroups(ids: ids, rows: rows)
        case (nil, let g?): return try RowGroups(rows: rows, numGenerations: g)
        case (nil, nil): throw GRPOError(.value, "pass exactly one of group_ids and num_generations, got neither")
        case (_?, _?): throw GRPOError(.value, "pass exactly one of group_ids and num_generations, got both")
        }
    }
}
