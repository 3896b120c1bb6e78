// {{source}}: {{op}} ({{engine}}) {{in_shape}} -> {{out_shape}}
struct config_{{name}} {
{{> snippets/weighted_types.h}}
    typedef {{owner_t}} owner_t;
    static const unsigned n_out = {{n_out}};
    static const unsigned out_c = {{out_c}}, n_kin = {{n_kin}};
    static const unsigned groups = {{groups}};
    static const bool relu = {{relu}};
    static const unsigned lanes = {{lanes}};
    static const unsigned slots = {{slots}}, res_lanes = {{res_lanes}};
    static const unsigned acc_ii = {{acc_ii}};
};
