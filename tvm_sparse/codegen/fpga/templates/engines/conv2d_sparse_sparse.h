// {{source}}: {{op}} ({{engine}}) {{in_shape}} -> {{out_shape}}
struct config_{{name}} {
    typedef {{in_t}} in_t;
    typedef {{out_t}} out_t;
    typedef {{weight_t}} weight_t;
    typedef {{bias_t}} bias_t;
    typedef {{accum_t}} accum_t;
    typedef {{owner_t}} owner_t;
    static const unsigned n_out = {{n_out}};
    static const unsigned in_h = {{in_h}}, in_w = {{in_w}};
    static const unsigned out_c = {{out_c}}, out_h = {{out_h}}, out_w = {{out_w}};
    static const unsigned kern_h = {{kern_h}}, kern_w = {{kern_w}}, n_kin = {{n_kin}};
    static const unsigned stride_h = {{stride_h}}, stride_w = {{stride_w}};
    static const unsigned dil_h = {{dil_h}}, dil_w = {{dil_w}};
    static const unsigned pad_top = {{pad_top}}, pad_left = {{pad_left}};
    static const unsigned groups = {{groups}}, acc_banks = {{acc_banks}}, taps = {{taps}};
    static const bool relu = {{relu}};
    static const unsigned lanes = {{lanes}}, res_lanes = {{res_lanes}};
};
