// {{source}}: {{op}} ({{engine}}) {{in_shape}} -> {{out_shape}}
struct config_{{name}} {
{{> snippets/weighted_types.h}}
    typedef {{owner_t}} owner_t;
    static const unsigned n_out = {{n_out}};
    static const unsigned in_h = {{in_h}}, in_w = {{in_w}};
    static const unsigned out_c = {{out_c}}, out_h = {{out_h}}, out_w = {{out_w}};
{{> snippets/conv_window.h}}
    static const unsigned groups = {{groups}}, acc_pixel_banks = {{acc_pixel_banks}};
    static const unsigned taps = {{taps}};
    static const unsigned slots = {{slots}};
    static const bool relu = {{relu}};
    static const unsigned lanes = {{lanes}}, res_lanes = {{res_lanes}};
    static const unsigned acc_ii = {{acc_ii}}, acc_copies = {{acc_copies}};
};
